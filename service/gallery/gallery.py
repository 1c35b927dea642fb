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
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from service.gallery import snapshot
from service.gallery.index import IndexKind, VectorIndex
from service.gallery.names import DisplayNames
from service.gallery.ranking import Candidate, MatchRule, rank
from service.gallery.records import NewTemplate, SubjectDetail, SubjectPage, WriteResult
from service.gallery.replication import SyncThread, replay
from service.gallery.rwlock import ReadWriteLock
from service.gallery.state import IndexState
from service.gallery.store import Store

log = logging.getLogger(__name__)


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

        self._new_index: Callable[[], VectorIndex] = new_index
        self._state = IndexState(new_index)
        # Only an HNSW graph is worth saving: an exact index of 10^6 rebuilds in a second.
        self._snapshot_dir = snapshot_dir if self._state.templates.kind is IndexKind.hnsw else None
        self._snapshot_seq: int | None = None  # the seq of the snapshot on disk, if known
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, not {snapshot_every}")
        self._snapshot_every = snapshot_every
        self.loaded_from = "store"  # or "snapshot": how the index was filled on open
        self._last_seq = 0
        self._names = DisplayNames(store.display_names)
        self._searching = ReadWriteLock()
        self._writing = threading.Lock()
        self._sync = SyncThread()

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
            self._apply_own(result, lambda: self._state.add(ids, [subject_id] * len(ids), vectors))
        return list(result.template_ids)

    def delete_subject(self, subject_id: str) -> int:
        """Delete a subject and its templates; returns how many templates went. Once this
        returns, no search on this replica returns the subject. Raises SubjectNotFound."""
        with self._writing:
            result = self._store.delete_subject(subject_id)
            self._apply_own(result, lambda: self._state.remove(result.template_ids))
        return len(result.template_ids)

    def delete_template(self, subject_id: str, template_id: int) -> None:
        """Delete one template (the subject stays, even with none left).

        Raises SubjectNotFound, or TemplateNotFound if the subject has no such template."""
        with self._writing:
            result = self._store.delete_template(subject_id, template_id)
            self._apply_own(result, lambda: self._state.remove(result.template_ids))

    def _apply_own(self, result: WriteResult, apply: Callable[[], set[int]]) -> None:
        """Bring the index up to this replica's write just committed."""
        if result.previous_seq != self._last_seq:
            # Other replicas wrote since our last catch-up: replay the log in order, ours too.
            self._catch_up_locked()
            return
        with self._searching.write():
            self._state.refresh_means(apply())
        self._last_seq = result.seq
        self._names.forget()

    # Replication (service/gallery/replication.py)

    def catch_up(self) -> int:
        """Apply the changes other replicas committed since the last one applied here.

        Returns how many change-log entries were applied (one per template touched)."""
        with self._writing:
            return self._catch_up_locked()

    def _catch_up_locked(self) -> int:
        applied, self._last_seq = replay(self._store, self._state, self._searching, self._last_seq)
        if applied:
            self._names.forget()
        return applied

    def start_sync(self, interval_s: float) -> None:
        """Run `catch_up` every `interval_s` seconds in a daemon thread until `stop_sync`, and
        write a snapshot whenever one is due."""

        def tick() -> None:
            self.catch_up()
            self._snapshot_if_due()

        self._sync.start(interval_s, tick)

    def stop_sync(self) -> None:
        self._sync.stop()

    def in_sync(self) -> bool:
        """Whether this replica has applied the store's last change and indexes as many
        templates as the store holds (counts, not the id sets: cheap enough for a health check)."""
        with self._writing:
            counts = self._store.counts()
            return counts.seq == self._last_seq and counts.templates == len(self._state.templates)

    # Reads

    def identify(
        self, queries: np.ndarray, top_k: int = 5, rule: MatchRule | str = MatchRule.best
    ) -> list[list[Candidate]]:
        """The `top_k` most similar subjects to each query embedding (n, d), best first, by
        subject under `rule` (service/gallery/ranking.py). Fewer than `top_k` candidates come
        back only when the gallery has fewer subjects (with the hnsw index, results are
        approximate)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        rule = MatchRule(rule)
        queries = self._unit_rows(queries, "queries")
        with self._searching.read():
            return rank(self._state, queries, top_k, rule)

    def comparisons(self, rule: MatchRule | str = MatchRule.best) -> int:
        """How many entries a probe is compared with: the indexed templates under the best
        rule, the subjects under the mean rule."""
        with self._searching.read():
            if MatchRule(rule) is MatchRule.best:
                return len(self._state.templates)
            return len(self._state.members)

    def get_subject(self, subject_id: str) -> SubjectDetail:
        """A subject with its templates' metadata. Raises SubjectNotFound."""
        return self._store.get_subject(subject_id)

    def display_names(self, subject_ids: Sequence[str]) -> dict[str, str | None]:
        """Display names by subject id, cached (service/gallery/names.py); subjects deleted
        meanwhile are absent."""
        return self._names.get(subject_ids)

    def list_subjects(
        self, limit: int = 50, offset: int = 0, after: str | None = None
    ) -> SubjectPage:
        """A page of subjects ordered by subject_id, with the total count; `after` (a
        subject_id) pages by key, which stays stable while subjects come and go."""
        return self._store.list_subjects(limit, offset, after)

    def stats(self) -> GalleryStats:
        counts = self._store.counts()
        templates = self._state.templates
        return GalleryStats(
            subjects=counts.subjects,
            templates=counts.templates,
            indexed_templates=len(templates),
            last_seq=self._last_seq,
            store_seq=counts.seq,
            index_kind=str(templates.kind),
            hnsw_ef_search=templates.ef_search,
            loaded_from=self.loaded_from,
            gpu=templates.on_gpu,
            model_id=self.model_id,
            embedding_dim=self.embedding_dim,
        )

    # Snapshots of an HNSW index (service/gallery/snapshot.py).

    def _snapshot_if_due(self) -> None:
        if self._snapshot_dir is None:
            return
        if self._last_seq - (self._snapshot_seq or 0) < self._snapshot_every:
            return
        # Writes wait only while the files are staged into the page cache (searches not at
        # all), once per `snapshot_every` changes; the fsyncs come after the lock is released.
        with self._writing:
            staged = self._stage_snapshot_locked()
        self._publish(staged)

    def _save_snapshot_locked(self) -> None:
        self._publish(self._stage_snapshot_locked())

    def _stage_snapshot_locked(self) -> tuple[Path, snapshot.Manifest] | None:
        if self._snapshot_dir is None or self._snapshot_seq == self._last_seq:
            return None
        return snapshot.stage_state(self._snapshot_dir, self._store, self._state, self._last_seq)

    def _publish(self, staged: tuple[Path, snapshot.Manifest] | None) -> None:
        seq = snapshot.publish_staged(staged)
        if seq is not None:
            self._snapshot_seq = seq

    def _load_snapshot(self) -> bool:
        """Fill the index from the newest snapshot if it matches this store."""
        if self._snapshot_dir is None:
            return False
        loaded = snapshot.load_state(self._snapshot_dir, self._store, self._new_index)
        if loaded is None:
            return False
        self._state, seq = loaded
        self._last_seq = self._snapshot_seq = seq
        self.loaded_from = "snapshot"
        return True

    def _load(self) -> None:
        self._last_seq = self._state.load(self._store)
        templates = self._state.templates
        log.info(
            "gallery loaded: %d templates of %d subjects up to change %d (%s index%s)",
            len(templates),
            len(self._state.members),
            self._last_seq,
            templates.kind,
            " on GPU" if templates.on_gpu else "",
        )

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
