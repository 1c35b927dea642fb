"""The gallery's in-memory state: the template index, each subject's mean template, and the
map between them. A cache of the store, changed only by `Gallery` (which holds its write
mutex, and the search lock for writing, around every change here).

Subjects get small integer codes, so template id -> subject is one int32 array (`owner`) and
the mean-template index is keyed by code."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from service.gallery.index import VectorIndex
from service.gallery.store import Store

log = logging.getLogger(__name__)

# Templates streamed from the store per chunk when the index is rebuilt on open.
LOAD_CHUNK = 10_000


class IndexState:
    def __init__(self, new_index: Callable[[], VectorIndex]) -> None:
        self.templates = new_index()
        # Each subject's normalised mean template, under the subject's code.
        self.means = new_index()
        self.owner = np.full(1024, -1, dtype=np.int32)
        self.codes: dict[str, int] = {}
        self.subject_ids: list[str] = []
        self.free_codes: list[int] = []
        self.members: dict[int, set[int]] = {}

    @classmethod
    def restored(
        cls,
        templates: VectorIndex,
        means: VectorIndex,
        owner: np.ndarray,
        subject_ids: list[str | None],
        new_index: Callable[[], VectorIndex],
    ) -> IndexState:
        """The state a snapshot saved (`subject_ids` has None at free codes)."""
        state = cls(new_index)
        state.templates, state.means, state.owner = templates, means, owner
        state.subject_ids = [s or "" for s in subject_ids]
        state.free_codes = [c for c, s in enumerate(subject_ids) if s is None]
        indexed = np.flatnonzero(owner >= 0)
        for template_id, code in zip(indexed.tolist(), owner[indexed].tolist(), strict=True):
            state.members.setdefault(code, set()).add(template_id)
        state.codes = {state.subject_ids[code]: code for code in state.members}
        return state

    def saved_subject_ids(self) -> list[str | None]:
        """Code -> subject id, None at free codes: what a snapshot keeps."""
        saved: list[str | None] = list(self.subject_ids)
        for code in self.free_codes:
            saved[code] = None
        return saved

    def load(self, store: Store) -> int:
        """Fill from the store; the means are summed as the templates stream past (grouped by
        subject), so no second pass over the vectors is needed. Returns the store's seq."""
        with store.embedding_snapshot(LOAD_CHUNK) as snapshot:
            pending: tuple[int, np.ndarray] | None = None
            for chunk in snapshot.chunks:
                self.add(chunk.ids, chunk.subject_ids, chunk.vectors)
                codes = self.owner[chunk.ids]
                starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
                firsts = codes[starts]
                sums = np.add.reduceat(chunk.vectors, starts, axis=0)
                if pending is not None and pending[0] == firsts[0]:
                    sums[0] += pending[1]
                elif pending is not None:
                    self.set_means(np.array([pending[0]]), pending[1][None])
                # The last subject of a chunk may go on in the next one.
                self.set_means(firsts[:-1], sums[:-1])
                pending = (int(firsts[-1]), sums[-1])
            if pending is not None:
                self.set_means(np.array([pending[0]]), pending[1][None])
            return snapshot.seq

    def code(self, subject_id: str) -> int:
        code = self.codes.get(subject_id)
        if code is None:
            if self.free_codes:
                code = self.free_codes.pop()
                self.subject_ids[code] = subject_id
            else:
                code = len(self.subject_ids)
                self.subject_ids.append(subject_id)
            self.codes[subject_id] = code
            self.members[code] = set()
        return code

    def indexed(self, template_ids: np.ndarray) -> np.ndarray:
        inside = template_ids < len(self.owner)
        indexed = np.zeros(len(template_ids), dtype=bool)
        indexed[inside] = self.owner[template_ids[inside]] >= 0
        return indexed

    def add(
        self, template_ids: np.ndarray, subject_ids: list[str], vectors: np.ndarray
    ) -> set[int]:
        """Index the templates not indexed yet; returns the codes of the subjects touched."""
        fresh = ~self.indexed(template_ids)
        if not fresh.any():
            return set()
        template_ids, vectors = template_ids[fresh], vectors[fresh]
        codes = np.array(
            [self.code(s) for s, new in zip(subject_ids, fresh, strict=True) if new],
            dtype=np.int32,
        )
        self.templates.add(template_ids, vectors)
        needed = int(template_ids.max()) + 1
        if needed > len(self.owner):
            grown = np.full(max(needed, 2 * len(self.owner)), -1, dtype=np.int32)
            grown[: len(self.owner)] = self.owner
            self.owner = grown
        self.owner[template_ids] = codes
        for template_id, code in zip(template_ids.tolist(), codes.tolist(), strict=True):
            self.members[code].add(template_id)
        return set(codes.tolist())

    def remove(self, template_ids: Sequence[int]) -> set[int]:
        """Unindex the templates that are indexed; returns the codes of the subjects touched."""
        ids = np.array(template_ids, dtype=np.int64)
        ids = ids[self.indexed(ids)]
        if not ids.size:
            return set()
        codes = self.owner[ids]
        self.templates.remove(ids)
        self.owner[ids] = -1
        for template_id, code in zip(ids.tolist(), codes.tolist(), strict=True):
            self.members[code].discard(template_id)
        return set(codes.tolist())

    def refresh_means(self, codes: set[int]) -> None:
        """Recompute the mean templates of these subjects; forget subjects left without any."""
        if not codes:
            return
        ordered = np.array(sorted(codes), dtype=np.int64)
        self.means.remove(ordered)
        kept, sums = [], []
        for code in ordered.tolist():
            members = self.members[code]
            if members:
                ids = np.fromiter(members, dtype=np.int64, count=len(members))
                kept.append(code)
                sums.append(self.templates.reconstruct(ids).sum(axis=0))
            else:
                del self.members[code]
                del self.codes[self.subject_ids[code]]
                self.free_codes.append(code)
        if kept:
            self.set_means(np.array(kept, dtype=np.int64), np.stack(sums))

    def set_means(self, codes: np.ndarray, sums: np.ndarray) -> None:
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # Opposite templates can cancel out; a zero mean then matches nothing (cosine 0).
        self.means.add(codes, sums / np.maximum(norms, 1e-12))
