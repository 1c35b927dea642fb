"""The gallery: enrolled subjects in the store of record, searchable through a FAISS index.

`Gallery` is all the HTTP layer uses. The store (SQL) is the truth; the index is a cache of it
in memory, rebuilt from the store on open and kept current by:

* this replica's own writes: the store commits first, then the index applies the change, so
  the index never holds a template the store lacks (a crash in between loses nothing: the
  next open rebuilds from the store);
* other replicas' writes: `catch_up()` replays the store's change log from the last seq this
  replica applied (`start_sync` runs it on a timer; staleness is bounded by the interval).

Applying a change is idempotent (adding a template already indexed, or removing one that is
not, does nothing), so replaying a replica's own writes from the log is harmless.

Locks: writers (enroll, deletes, catch-up) take turns on one mutex, so the store and the index
change in the same order. Searches share a readers-writer lock with the step that changes the
index: that step waits for searches in flight and holds new ones back. A delete therefore
returns only after every search that could still see the subject has finished, and every
search that starts after it returns sees it gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from service import snapshot
from service.index import IndexKind, VectorIndex
from service.rwlock import ReadWriteLock
from service.store import (
    ChangeKind,
    GalleryError,
    ModelMismatch,
    NewTemplate,
    Store,
    SubjectDetail,
    SubjectNotFound,
    SubjectPage,
    TemplateNotFound,
    WriteResult,
)

__all__ = [
    "Candidate",
    "Gallery",
    "GalleryError",
    "GalleryStats",
    "MatchRule",
    "ModelMismatch",
    "NewTemplate",
    "SubjectNotFound",
    "TemplateNotFound",
]

log = logging.getLogger(__name__)

# Changes replayed per store round trip by catch_up.
CATCH_UP_BATCH = 10_000
# Templates streamed from the store per chunk when the index is rebuilt on open.
LOAD_CHUNK = 10_000
# First guess at how many templates to fetch per subject wanted; doubled while short.
TEMPLATES_PER_SUBJECT_GUESS = 4


class MatchRule(StrEnum):
    best = "best"
    mean = "mean"


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    similarity: float  # cosine
    template_id: int | None  # the best-matching template; None under the mean rule


@dataclass(frozen=True)
class GalleryStats:
    subjects: int  # in the store, with or without templates
    templates: int  # in the store
    indexed_templates: int  # in this replica's index
    last_seq: int  # the last change this replica applied
    store_seq: int  # the last change in the store
    index_kind: str
    hnsw_ef_search: int | None  # None for the exact kind
    loaded_from: str  # "store" (rebuilt on open) or "snapshot"
    gpu: bool
    model_id: str
    embedding_dim: int


class Gallery:
    """Subjects and their face templates, searchable by cosine similarity. Thread-safe."""

    def __init__(
        self,
        store: Store,
        index_kind: IndexKind | str,
        use_gpu: bool,
        hnsw_ef_search: int,
        snapshot_dir: Path | None = None,
        snapshot_every: int = 10_000,
    ) -> None:
        """Use `Gallery.open`; this starts with an empty index."""
        self._store = store
        dim = store.embedding_dim

        def new_index() -> VectorIndex:
            return VectorIndex(dim, index_kind, use_gpu, ef_search=hnsw_ef_search)

        self._new_index = new_index
        self._templates = new_index()
        # Each subject's normalised mean template, under the subject's code.
        self._means = new_index()
        # Only an HNSW graph is worth saving: an exact index of 10^6 rebuilds in a second.
        self._snapshot_dir = snapshot_dir if self._templates.kind is IndexKind.hnsw else None
        self._snapshot_seq: int | None = None  # the seq of the snapshot on disk, if known
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, not {snapshot_every}")
        self._snapshot_every = snapshot_every
        self.loaded_from = "store"  # or "snapshot": how the index was filled on open
        # Subjects get small integer codes: template id -> code is then one int32 array.
        self._owner = np.full(1024, -1, dtype=np.int32)
        self._codes: dict[str, int] = {}
        self._subject_ids: list[str] = []
        self._free_codes: list[int] = []
        self._members: dict[int, set[int]] = {}
        self._last_seq = 0
        self._searching = ReadWriteLock()
        self._writing = threading.Lock()
        self._sync_thread: threading.Thread | None = None
        self._sync_stop = threading.Event()

    @classmethod
    def open(
        cls,
        database_url: str,
        model_id: str,
        embedding_dim: int,
        index_kind: IndexKind | str = IndexKind.exact,
        use_gpu: bool = False,
        hnsw_ef_search: int = 128,
        snapshot_dir: Path | None = None,
        snapshot_every: int = 10_000,
    ) -> Gallery:
        """Open (creating or migrating) the store, bind it to `model_id` and fill the index:
        from the newest snapshot in `snapshot_dir` that still matches the store, brought up to
        date from the change log (HNSW only), else rebuilt from the store. While syncing, a
        new snapshot is written once the index is `snapshot_every` changes past the last one,
        so a replica that is killed replays at most about that many changes when it restarts.

        Raises ModelMismatch when the store holds embeddings of another model."""
        store = Store.open(database_url, model_id, embedding_dim)
        try:
            gallery = cls(store, index_kind, use_gpu, hnsw_ef_search, snapshot_dir, snapshot_every)
            with gallery._writing:
                if gallery._load_snapshot():
                    gallery._catch_up_locked()
                else:
                    gallery._load()
                    gallery._save_snapshot_locked()
        except BaseException:
            store.close()
            raise
        return gallery

    def close(self) -> None:
        self.stop_sync()
        with self._writing:
            self._save_snapshot_locked()
        self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def model_id(self) -> str:
        return self._store.model_id

    @property
    def embedding_dim(self) -> int:
        return self._store.embedding_dim

    @property
    def last_seq(self) -> int:
        """The change seq up to which this replica's index reflects the store."""
        return self._last_seq

    # Writes

    def enroll(
        self,
        subject_id: str,
        templates: Sequence[NewTemplate],
        display_name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[int]:
        """Add templates to a subject (created if new; a display name or metadata given replaces
        the stored one). Embeddings are L2-normalised before they are stored. Returns the new
        template ids, once the store has committed them and the index holds them."""
        if not templates:
            raise ValueError("enroll needs at least one template")
        vectors = self._unit_rows(np.stack([t.embedding for t in templates]), "embeddings")
        normalised = [replace(t, embedding=v) for t, v in zip(templates, vectors, strict=True)]
        with self._writing:
            result = self._store.add_templates(subject_id, normalised, display_name, metadata)
            ids = np.array(result.template_ids, dtype=np.int64)
            self._apply_own(result, lambda: self._add(ids, [subject_id] * len(ids), vectors))
        return list(result.template_ids)

    def delete_subject(self, subject_id: str) -> int:
        """Delete a subject and its templates; returns how many templates went. Once this
        returns, no search on this replica returns the subject. Raises SubjectNotFound."""
        with self._writing:
            result = self._store.delete_subject(subject_id)
            self._apply_own(result, lambda: self._remove(result.template_ids))
        return len(result.template_ids)

    def delete_template(self, subject_id: str, template_id: int) -> None:
        """Delete one template (the subject stays, even with none left).

        Raises SubjectNotFound, or TemplateNotFound if the subject has no such template."""
        with self._writing:
            result = self._store.delete_template(subject_id, template_id)
            self._apply_own(result, lambda: self._remove(result.template_ids))

    def _apply_own(self, result: WriteResult, apply: Callable[[], set[int]]) -> None:
        """Bring the index up to this replica's write just committed."""
        if result.previous_seq != self._last_seq:
            # Other replicas wrote since our last catch-up: replay the log in order, ours too.
            self._catch_up_locked()
            return
        with self._searching.write():
            self._refresh_means(apply())
        self._last_seq = result.seq

    # Replication

    def catch_up(self) -> int:
        """Apply the changes other replicas committed since the last one applied here.

        Returns how many change-log entries were applied (one per template touched)."""
        with self._writing:
            return self._catch_up_locked()

    def _catch_up_locked(self) -> int:
        applied = 0
        while changes := self._store.changes_since(self._last_seq, CATCH_UP_BATCH):
            enrolled = [c.template_id for c in changes if c.kind is ChangeKind.enroll]
            removed = [
                c.template_id
                for c in changes
                if c.kind is not ChangeKind.enroll and c.template_id is not None
            ]
            # Read after the changes: an enrolled template deleted since is simply absent, and
            # its deletion is in this batch or the next one.
            added = self._store.templates_by_ids([i for i in enrolled if i is not None])
            with self._searching.write():
                touched = self._remove(removed)
                touched |= self._add(added.ids, added.subject_ids, added.vectors)
                self._refresh_means(touched)
            self._last_seq = changes[-1].seq
            applied += len(changes)
        return applied

    def start_sync(self, interval_s: float) -> None:
        """Run `catch_up` every `interval_s` seconds in a daemon thread until `stop_sync`, and
        write a snapshot whenever one is due."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        if self._sync_thread is not None:
            raise RuntimeError("this gallery is already syncing")
        self._sync_stop.clear()

        def poll() -> None:
            while not self._sync_stop.wait(interval_s):
                try:
                    self.catch_up()
                    self._snapshot_if_due()
                except Exception:
                    # A database outage must not end replication: retry on the next tick.
                    log.exception("gallery catch-up failed; retrying in %s s", interval_s)

        self._sync_thread = threading.Thread(target=poll, name="gallery-sync", daemon=True)
        self._sync_thread.start()

    def stop_sync(self) -> None:
        if self._sync_thread is None:
            return
        self._sync_stop.set()
        self._sync_thread.join()
        self._sync_thread = None

    def in_sync(self) -> bool:
        """Whether this replica has applied the store's last change and indexes as many
        templates as the store holds (counts, not the id sets: cheap enough for a health check)."""
        with self._writing:
            counts = self._store.counts()
            return counts.seq == self._last_seq and counts.templates == len(self._templates)

    # Reads

    def identify(
        self, queries: np.ndarray, top_k: int = 5, rule: MatchRule | str = MatchRule.best
    ) -> list[list[Candidate]]:
        """The `top_k` most similar subjects to each query embedding (n, d), best first.

        Ranking is per subject, never per template, under one of two rules:

        * `best` (default): a subject scores the cosine of its most similar template, which is
          reported as `template_id`. Robust when a subject's templates vary (pose, age).
        * `mean`: a subject scores the cosine to the L2-normalised mean of its templates.
          Averages out noise of single templates; `template_id` is None.

        Fewer than `top_k` candidates come back only when the gallery has fewer subjects (with
        the hnsw index, results are approximate)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        rule = MatchRule(rule)
        queries = self._unit_rows(queries, "queries")
        with self._searching.read():
            if rule is MatchRule.mean:
                return self._identify_by_mean(queries, top_k)
            return self._identify_by_best(queries, top_k)

    def _identify_by_best(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        results: list[list[Candidate]] = [[] for _ in range(len(queries))]
        wanted = min(top_k, len(self._members))
        ceiling = min(len(self._templates), self._templates.max_k)
        if not wanted:
            return results
        fetch = min(ceiling, top_k * TEMPLATES_PER_SUBJECT_GUESS)
        rows = np.arange(len(queries))
        while rows.size:
            similarities, template_ids = self._templates.search(queries[rows], fetch)
            short = []
            for j, row in enumerate(rows):
                candidates = self._best_per_subject(similarities[j], template_ids[j], top_k)
                # A few subjects with many templates can fill the whole fetch: fetch more.
                if len(candidates) < wanted and fetch < ceiling:
                    short.append(row)
                else:
                    results[row] = candidates
            rows = np.array(short, dtype=np.int64)
            fetch = min(ceiling, 2 * fetch)
        return results

    def _best_per_subject(
        self, similarities: np.ndarray, template_ids: np.ndarray, top_k: int
    ) -> list[Candidate]:
        found = template_ids >= 0
        similarities, template_ids = similarities[found], template_ids[found]
        codes = self._owner[template_ids]
        # Neighbours come best first, so a subject's first appearance is its best template.
        _, first = np.unique(codes, return_index=True)
        first = np.sort(first)[:top_k]
        return [
            Candidate(self._subject_ids[codes[i]], float(similarities[i]), int(template_ids[i]))
            for i in first
        ]

    def _identify_by_mean(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        similarities, codes = self._means.search(queries, top_k)
        return [
            [
                Candidate(self._subject_ids[code], float(similarity), None)
                for similarity, code in zip(row_similarities, row_codes, strict=True)
                if code >= 0
            ]
            for row_similarities, row_codes in zip(similarities, codes.tolist(), strict=True)
        ]

    def get_subject(self, subject_id: str) -> SubjectDetail:
        """A subject with its templates' metadata. Raises SubjectNotFound."""
        return self._store.get_subject(subject_id)

    def display_names(self, subject_ids: Sequence[str]) -> dict[str, str | None]:
        """Display names by subject id; subjects deleted meanwhile are absent."""
        return self._store.display_names(subject_ids)

    def list_subjects(
        self, limit: int = 50, offset: int = 0, after: str | None = None
    ) -> SubjectPage:
        """A page of subjects ordered by subject_id, with the total count; `after` (a
        subject_id) pages by key, which stays stable while subjects come and go."""
        return self._store.list_subjects(limit, offset, after)

    def stats(self) -> GalleryStats:
        counts = self._store.counts()
        return GalleryStats(
            subjects=counts.subjects,
            templates=counts.templates,
            indexed_templates=len(self._templates),
            last_seq=self._last_seq,
            store_seq=counts.seq,
            index_kind=str(self._templates.kind),
            hnsw_ef_search=self._templates.ef_search,
            loaded_from=self.loaded_from,
            gpu=self._templates.on_gpu,
            model_id=self.model_id,
            embedding_dim=self.embedding_dim,
        )

    # Snapshots of an HNSW index (service/snapshot.py). Only one thread writes them at a time:
    # `open`, then the sync thread, then `close` once syncing has stopped.

    def _snapshot_if_due(self) -> None:
        if self._snapshot_dir is None:
            return
        if self._last_seq - (self._snapshot_seq or 0) < self._snapshot_every:
            return
        # Writes wait only while the files are staged into the page cache (searches not at
        # all), once per `snapshot_every` changes; the fsyncs come after the lock is released.
        with self._writing:
            staged = self._stage_snapshot_locked()
        self._publish_snapshot(staged)

    def _save_snapshot_locked(self) -> None:
        self._publish_snapshot(self._stage_snapshot_locked())

    def _stage_snapshot_locked(self) -> tuple[Path, snapshot.Manifest] | None:
        """Caller holds `_writing`: the index's files, written but not yet durable or visible."""
        if self._snapshot_dir is None or self._snapshot_seq == self._last_seq:
            return None
        subject_ids: list[str | None] = list(self._subject_ids)
        for code in self._free_codes:
            subject_ids[code] = None
        try:
            change = self._store.changes_since(self._last_seq - 1, 1) if self._last_seq else []
            manifest = snapshot.Manifest(
                format=snapshot.FORMAT,
                model_id=self.model_id,
                embedding_dim=self.embedding_dim,
                store_created_at=self._store.created_at,
                seq=self._last_seq,
                change=snapshot.change_record(change[0] if change else None),
                templates=len(self._templates),
            )
            # Searches go on meanwhile: `_writing` alone keeps the index still.
            partial = snapshot.stage(
                self._snapshot_dir,
                snapshot.Snapshot(manifest, self._templates, self._means, self._owner, subject_ids),
            )
        except Exception:
            # A full disk or a lost database must not take the gallery down (or keep it from
            # closing): without a snapshot the next open rebuilds from the store.
            log.exception("cannot write the index snapshot to %s", self._snapshot_dir)
            return None
        return partial, manifest

    def _publish_snapshot(self, staged: tuple[Path, snapshot.Manifest] | None) -> None:
        """Make what `_stage_snapshot_locked` wrote durable and visible (nothing if it wrote
        nothing); needs no lock."""
        if staged is None:
            return
        partial, manifest = staged
        try:
            folder = snapshot.publish(partial, manifest.seq)
        except Exception:
            log.exception("cannot write the index snapshot to %s", partial.parent)
            return
        self._snapshot_seq = manifest.seq
        log.info("index snapshot written: %s (%d templates)", folder, manifest.templates)

    def _load_snapshot(self) -> bool:
        """Fill the index from the newest snapshot if it matches this store; False (and the
        index left empty) otherwise."""
        if self._snapshot_dir is None:
            return False
        folder = snapshot.newest(self._snapshot_dir)
        if folder is None:
            return False
        try:
            loaded = snapshot.read(folder, self._new_index(), self._new_index())
        except (ValueError, OSError, RuntimeError, TypeError, KeyError) as error:
            log.warning("index snapshot %s unusable, rebuilding from the store: %s", folder, error)
            return False
        reason = self._snapshot_mismatch(loaded.manifest)
        if reason is not None:
            log.warning("index snapshot %s not used, rebuilding from the store: %s", folder, reason)
            return False
        self._templates, self._means, self._owner = loaded.templates, loaded.means, loaded.owner
        self._subject_ids = [s or "" for s in loaded.subject_ids]
        self._free_codes = [c for c, s in enumerate(loaded.subject_ids) if s is None]
        self._members = {}
        indexed = np.flatnonzero(self._owner >= 0)
        for template_id, code in zip(indexed.tolist(), self._owner[indexed].tolist(), strict=True):
            self._members.setdefault(code, set()).add(template_id)
        self._codes = {loaded.subject_ids[code]: code for code in self._members}
        self._last_seq = self._snapshot_seq = loaded.manifest.seq
        self.loaded_from = "snapshot"
        log.info(
            "gallery loaded from %s: %d templates of %d subjects up to change %d",
            folder,
            len(self._templates),
            len(self._members),
            self._last_seq,
        )
        return True

    def _snapshot_mismatch(self, manifest: snapshot.Manifest) -> str | None:
        if (manifest.model_id, manifest.embedding_dim) != (self.model_id, self.embedding_dim):
            return f"made for model {manifest.model_id}, the store holds {self.model_id}"
        if manifest.store_created_at != self._store.created_at:
            return "made from another store (created at another time)"
        if manifest.seq > self._store.max_seq():
            return f"reflects change {manifest.seq}, the store ends at {self._store.max_seq()}"
        if manifest.seq:
            found = self._store.changes_since(manifest.seq - 1, 1)
            here = snapshot.change_record(found[0]) if found else None
            if here != manifest.change:
                return f"change {manifest.seq} differs in the store (another or a reset database)"
        return None

    # The in-memory index state. Callers hold `_writing`, and `_searching` for writing.

    def _load(self) -> None:
        """Fill the index from a store snapshot; the means are summed as the templates stream
        past (grouped by subject), so no second pass over the vectors is needed."""
        with self._store.embedding_snapshot(LOAD_CHUNK) as snapshot:
            pending: tuple[int, np.ndarray] | None = None
            for chunk in snapshot.chunks:
                self._add(chunk.ids, chunk.subject_ids, chunk.vectors)
                codes = self._owner[chunk.ids]
                starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
                firsts = codes[starts]
                sums = np.add.reduceat(chunk.vectors, starts, axis=0)
                if pending is not None and pending[0] == firsts[0]:
                    sums[0] += pending[1]
                elif pending is not None:
                    self._set_means(np.array([pending[0]]), pending[1][None])
                # The last subject of a chunk may go on in the next one.
                self._set_means(firsts[:-1], sums[:-1])
                pending = (int(firsts[-1]), sums[-1])
            if pending is not None:
                self._set_means(np.array([pending[0]]), pending[1][None])
            self._last_seq = snapshot.seq
        log.info(
            "gallery loaded: %d templates of %d subjects up to change %d (%s index%s)",
            len(self._templates),
            len(self._members),
            self._last_seq,
            self._templates.kind,
            " on GPU" if self._templates.on_gpu else "",
        )

    def _code(self, subject_id: str) -> int:
        code = self._codes.get(subject_id)
        if code is None:
            if self._free_codes:
                code = self._free_codes.pop()
                self._subject_ids[code] = subject_id
            else:
                code = len(self._subject_ids)
                self._subject_ids.append(subject_id)
            self._codes[subject_id] = code
            self._members[code] = set()
        return code

    def _indexed(self, template_ids: np.ndarray) -> np.ndarray:
        inside = template_ids < len(self._owner)
        indexed = np.zeros(len(template_ids), dtype=bool)
        indexed[inside] = self._owner[template_ids[inside]] >= 0
        return indexed

    def _add(
        self, template_ids: np.ndarray, subject_ids: list[str], vectors: np.ndarray
    ) -> set[int]:
        """Index the templates not indexed yet; returns the codes of the subjects touched."""
        fresh = ~self._indexed(template_ids)
        if not fresh.any():
            return set()
        template_ids, vectors = template_ids[fresh], vectors[fresh]
        codes = np.array(
            [self._code(s) for s, new in zip(subject_ids, fresh, strict=True) if new],
            dtype=np.int32,
        )
        self._templates.add(template_ids, vectors)
        needed = int(template_ids.max()) + 1
        if needed > len(self._owner):
            grown = np.full(max(needed, 2 * len(self._owner)), -1, dtype=np.int32)
            grown[: len(self._owner)] = self._owner
            self._owner = grown
        self._owner[template_ids] = codes
        for template_id, code in zip(template_ids.tolist(), codes.tolist(), strict=True):
            self._members[code].add(template_id)
        return set(codes.tolist())

    def _remove(self, template_ids: Sequence[int]) -> set[int]:
        """Unindex the templates that are indexed; returns the codes of the subjects touched."""
        ids = np.array(template_ids, dtype=np.int64)
        ids = ids[self._indexed(ids)]
        if not ids.size:
            return set()
        codes = self._owner[ids]
        self._templates.remove(ids)
        self._owner[ids] = -1
        for template_id, code in zip(ids.tolist(), codes.tolist(), strict=True):
            self._members[code].discard(template_id)
        return set(codes.tolist())

    def _refresh_means(self, codes: set[int]) -> None:
        """Recompute the mean templates of these subjects; forget subjects left without any."""
        if not codes:
            return
        ordered = np.array(sorted(codes), dtype=np.int64)
        self._means.remove(ordered)
        kept, sums = [], []
        for code in ordered.tolist():
            members = self._members[code]
            if members:
                ids = np.fromiter(members, dtype=np.int64, count=len(members))
                kept.append(code)
                sums.append(self._templates.reconstruct(ids).sum(axis=0))
            else:
                del self._members[code]
                del self._codes[self._subject_ids[code]]
                self._free_codes.append(code)
        if kept:
            self._set_means(np.array(kept, dtype=np.int64), np.stack(sums))

    def _set_means(self, codes: np.ndarray, sums: np.ndarray) -> None:
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # Opposite templates can cancel out; a zero mean then matches nothing (cosine 0).
        self._means.add(codes, sums / np.maximum(norms, 1e-12))

    def _unit_rows(self, array: np.ndarray, name: str) -> np.ndarray:
        matrix = np.asarray(array, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{name} must have shape (n, {self.embedding_dim}), not {matrix.shape}"
            )
        if not np.isfinite(matrix).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise ValueError(f"{name} contain a zero vector, which has no direction")
        return matrix / norms
