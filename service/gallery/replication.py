"""Replication: other replicas' writes reach this replica's index by replaying the store's
change log from the last seq applied here, on a timer. Applying a change is idempotent
(adding a template already indexed, or removing one that is not, does nothing), so replaying
this replica's own writes is harmless."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.gallery.records import ChangeKind
from service.gallery.rwlock import ReadWriteLock
from service.gallery.state import IndexState
from service.gallery.store import Store

log = logging.getLogger(__name__)

# Changes replayed per store round trip.
CATCH_UP_BATCH = 10_000


def replay(
    store: Store, state: IndexState, searching: ReadWriteLock, last_seq: int
) -> tuple[int, int]:
    """Apply the store's changes after `last_seq` to `state` (the caller holds the gallery's
    write mutex); returns (changes applied, the new last seq)."""
    applied = 0
    while changes := store.changes_since(last_seq, CATCH_UP_BATCH):
        enrolled = [c.template_id for c in changes if c.kind is ChangeKind.enroll]
        removed = [
            c.template_id
            for c in changes
            if c.kind is not ChangeKind.enroll and c.template_id is not None
        ]
        # Read after the changes: an enrolled template deleted since is simply absent, and
        # its deletion is in this batch or the next one.
        added = store.templates_by_ids([i for i in enrolled if i is not None])
        with searching.write():
            touched = state.remove(removed)
            touched |= state.add(added.ids, added.subject_ids, added.vectors)
            state.refresh_means(touched)
        last_seq = changes[-1].seq
        applied += len(changes)
    return applied, last_seq


class SyncThread:
    """Runs `tick` every interval in a daemon thread until stopped."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, interval_s: float, tick: Callable[[], None]) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        if self._thread is not None:
            raise RuntimeError("this gallery is already syncing")
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(interval_s):
                try:
                    tick()
                except Exception:
                    # A database outage must not end replication: retry on the next tick.
                    log.exception("gallery catch-up failed; retrying in %s s", interval_s)

        self._thread = threading.Thread(target=poll, name="gallery-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
