"""Subjects' display names, cached in front of the store for `/identify`.

Every identification names its candidates; asking the store each time was 15% of the time
the server held the GIL under load (bench/README.md, overhead.py). Names change only with a
write (an enrolment may rename its subject), and every write reaches this replica through
its own write path or the change log, so the gallery forgets the whole cache after applying
any. A lookup that raced a write (read the store, then found the cache forgotten meanwhile)
answers what it read but does not cache it: the name it read may predate the write."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

# Bounded: a gallery of millions of subjects keeps the most recently asked-for names only.
MAX_NAMES = 50_000


class DisplayNames:
    def __init__(self, fetch: Callable[[Sequence[str]], dict[str, str | None]]) -> None:
        """`fetch`: the store's names of the subjects that exist (absent: deleted)."""
        self._fetch = fetch
        self._names: dict[str, str | None] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def get(self, subject_ids: Sequence[str]) -> dict[str, str | None]:
        with self._lock:
            known = {s: self._names[s] for s in subject_ids if s in self._names}
            generation = self._generation
        missing = [s for s in subject_ids if s not in known]
        if missing:
            fetched = self._fetch(missing)
            with self._lock:
                if self._generation == generation:
                    if len(self._names) + len(fetched) > MAX_NAMES:
                        self._names.clear()
                    self._names.update(fetched)
            known.update(fetched)
        return known

    def forget(self) -> None:
        """After any write: every cached name may be stale."""
        with self._lock:
            self._names.clear()
            self._generation += 1
