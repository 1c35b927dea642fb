"""A FAISS index over unit-length embeddings, keyed by our own int64 ids.

Vectors are L2-normalised float32, so the inner product is the cosine similarity; normalising
is the caller's job (the gallery does it). Two kinds:

* `exact`: brute force, IndexFlatIP inside IndexIDMap2 so our ids are FAISS's ids. A removal
  compacts the flat array, O(n), which is fine for deletes that are rare next to searches.
* `hnsw`: approximate, IndexHNSWFlat with the inner product metric. An HNSW graph cannot drop
  a node, so a removed vector becomes a tombstone: it stays in the graph, results skip it, and
  the search fetches more neighbours so `k` live ones still come back. Once tombstones pass
  `max_dead_fraction` of the graph it is rebuilt from the live vectors (O(n log n), under the
  write lock: searches wait for it).

On a GPU (`use_gpu=True` and faiss sees one) the exact kind runs on a GpuIndexFlatIP. GPU
indexes cannot remove either, so it uses tombstones too. FAISS has no GPU HNSW: that kind
stays on the CPU, and `on_gpu` says where the index really is.

Thread-safe: searches run concurrently with each other (a FAISS search only reads the index),
never with a write, through a readers-writer lock. GPU searches are one at a time, since one
set of GPU resources must not serve two threads at once.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from service.gallery.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

# faiss's GPU k-selection handles at most this many neighbours per query.
GPU_MAX_K = 2048
# Vectors copied out of an index at a time when it is rebuilt without its tombstones.
REBUILD_CHUNK = 65_536


def _ids_path(path: Path) -> Path:
    return path.with_name(path.name + ".ids.npy")


class IndexKind(StrEnum):
    exact = "exact"
    hnsw = "hnsw"


class _Backend(Protocol):
    tombstones: int

    def __len__(self) -> int: ...
    def __contains__(self, item: int) -> bool: ...
    def ids(self) -> np.ndarray: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> int: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...


class _IdMapped:
    """Exact CPU search where FAISS maps ids itself and removes for real."""

    tombstones = 0

    def __init__(self, dim: int) -> None:
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # FAISS would silently keep a second copy of an id added twice; this set refuses it.
        self._members: set[int] = set()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, item: int) -> bool:
        return item in self._members

    def ids(self) -> np.ndarray:
        return np.fromiter(self._members, dtype=np.int64, count=len(self._members))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)
        self._members.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> int:
        present = [i for i in ids.tolist() if i in self._members]
        if present:
            self._index.remove_ids(np.array(present, dtype=np.int64))
            self._members.difference_update(present)
        return len(present)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(queries, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)


class _Tombstoned:
    """An index addressed by insertion position, with our ids and tombstones kept beside it."""

    def __init__(
        self, make: Callable[[], faiss.Index], max_k: int, max_dead_fraction: float
    ) -> None:
        self._make = make
        self._index = make()
        self._max_k = max_k
        self._max_dead_fraction = max_dead_fraction
        # Position -> our id, or -1 once removed; grown by doubling, valid up to ntotal.
        self._labels = np.full(1024, -1, dtype=np.int64)
        self._positions: dict[int, int] = {}
        self.tombstones = 0

    def __len__(self) -> int:
        return len(self._positions)

    def __contains__(self, item: int) -> bool:
        return item in self._positions

    def ids(self) -> np.ndarray:
        labels = self._labels[: self._index.ntotal]
        return labels[labels >= 0]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self._index.ntotal
        stop = start + len(ids)
        if stop > len(self._labels):
            grown = np.full(max(stop, 2 * len(self._labels)), -1, dtype=np.int64)
            grown[:start] = self._labels[:start]
            self._labels = grown
        self._index.add(vectors)
        self._labels[start:stop] = ids
        self._positions.update(zip(ids.tolist(), range(start, stop), strict=True))

    def remove(self, ids: np.ndarray) -> int:
        positions = [self._positions.pop(i) for i in ids.tolist() if i in self._positions]
        self._labels[positions] = -1
        self.tombstones += len(positions)
        if self.tombstones > self._max_dead_fraction * self._index.ntotal:
            self._rebuild()
        return len(positions)

    def _rebuild(self) -> None:
        fresh = self._make()
        total = self._index.ntotal
        for start in range(0, total, REBUILD_CHUNK):
            count = min(REBUILD_CHUNK, total - start)
            alive = self._labels[start : start + count] >= 0
            if alive.any():
                fresh.add(self._index.reconstruct_n(start, count)[alive])
        labels = self._labels[:total]
        labels = labels[labels >= 0]
        log.info("rebuilt a %d-vector index without its %d tombstones", len(labels), total)
        self._index = fresh
        self._labels = np.concatenate([labels, np.full(1024, -1, dtype=np.int64)])
        self._positions = dict(zip(labels.tolist(), range(len(labels)), strict=True))
        self.tombstones = 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        total = self._index.ntotal
        ceiling = min(total, self._max_k)
        # Enough that k live neighbours come back when the dead are spread evenly; rows where
        # they cluster near the query search again with twice as many.
        fetch = k if not self.tombstones else int(k * total / len(self) * 1.5) + 8
        fetch = min(fetch, ceiling)
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        rows = np.arange(len(queries))
        while rows.size:
            found, positions = self._index.search(queries[rows], fetch)
            labels = np.where(positions >= 0, self._labels[positions], -1)
            short = []
            for j, row in enumerate(rows):
                live = np.flatnonzero(labels[j] >= 0)[:k]
                if len(live) < k and fetch < ceiling:
                    short.append(row)
                    continue
                ids[row, : len(live)] = labels[j, live]
                similarities[row, : len(live)] = found[j, live]
            rows = np.array(short, dtype=np.int64)
            fetch = min(2 * fetch, ceiling)
        return similarities, ids

    def faiss_index(self) -> faiss.Index:
        return self._index

    def labels(self) -> np.ndarray:
        """Position -> our id (-1 for a tombstone), for every vector in the structure."""
        return self._labels[: self._index.ntotal].copy()

    def restore(self, index: faiss.Index, labels: np.ndarray) -> None:
        """Take over a saved structure: `index` and its `labels()` as they were saved."""
        if index.ntotal != len(labels):
            raise ValueError(f"{index.ntotal} vectors but {len(labels)} labels")
        live = labels >= 0
        if len(set(labels[live].tolist())) != int(live.sum()):
            raise ValueError("the saved labels repeat an id")
        self._index = index
        self._labels = np.concatenate([labels.astype(np.int64), np.full(1024, -1, np.int64)])
        self._positions = dict(
            zip(labels[live].tolist(), np.flatnonzero(live).tolist(), strict=True)
        )
        self.tombstones = int((~live).sum())

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        positions = np.array([self._positions[i] for i in ids.tolist()], dtype=np.int64)
        return self._index.reconstruct_batch(positions)


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: IndexKind | str = IndexKind.exact,
        use_gpu: bool = False,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 128,
        max_dead_fraction: float = 0.2,
    ) -> None:
        self.dim = dim
        self.kind = IndexKind(kind)
        self._ef_search = ef_search
        self.on_gpu = use_gpu and self.kind is IndexKind.exact and faiss.get_num_gpus() > 0
        if use_gpu and not self.on_gpu:
            log.info("%s index on the CPU: faiss has no GPU for it", self.kind)
        self._lock = ReadWriteLock()
        self._gpu_search: AbstractContextManager[object] = nullcontext()
        self.max_k = sys.maxsize
        self._backend: _Backend
        self._hnsw: _Tombstoned | None = None
        if self.on_gpu:
            resources = faiss.StandardGpuResources()
            self._gpu_search = threading.Lock()
            self.max_k = GPU_MAX_K
            self._backend = _Tombstoned(
                lambda: faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(dim)),
                GPU_MAX_K,
                max_dead_fraction,
            )
        elif self.kind is IndexKind.hnsw:

            def make_hnsw() -> faiss.Index:
                index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = ef_construction
                index.hnsw.efSearch = self._ef_search
                return index

            self._hnsw = _Tombstoned(make_hnsw, sys.maxsize, max_dead_fraction)
            self._backend = self._hnsw
        else:
            self._backend = _IdMapped(dim)

    def __len__(self) -> int:
        """Live vectors (tombstones excluded)."""
        with self._lock.read():
            return len(self._backend)

    def __contains__(self, item: int) -> bool:
        with self._lock.read():
            return int(item) in self._backend

    @property
    def ef_search(self) -> int | None:
        """HNSW's search breadth (None for other kinds): higher finds the true nearest more
        often, at a cost in time about proportional to it (bench/gallery_scale.py)."""
        return self._ef_search if self._hnsw is not None else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self._hnsw is None:
            raise ValueError(f"a {self.kind} index has no ef_search")
        if value < 1:
            raise ValueError(f"ef_search must be at least 1, not {value}")
        with self._lock.write():
            self._ef_search = int(value)
            self._hnsw.faiss_index().hnsw.efSearch = self._ef_search

    @property
    def tombstones(self) -> int:
        """Removed vectors still in the structure, awaiting a rebuild (always 0 for CPU exact)."""
        with self._lock.read():
            return self._backend.tombstones

    def ids(self) -> np.ndarray:
        """The live ids, int64, in no particular order."""
        with self._lock.read():
            return self._backend.ids().copy()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add unit vectors (n, dim) under new ids. Raises ValueError if an id is present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._matrix(vectors, "vectors")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("the same id appears twice in one add")
        if not len(ids):
            return
        with self._lock.write():
            clashes = [i for i in ids.tolist() if i in self._backend]
            if clashes:
                raise ValueError(f"ids already in the index: {clashes[:10]}")
            self._backend.add(ids, vectors)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were present."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return 0
        with self._lock.write():
            return self._backend.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar vectors to each query (n, dim): similarities (n, k) float32 and
        ids (n, k) int64, best first. Empty slots (fewer than k vectors) have id -1 and
        similarity -inf."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        queries = self._matrix(queries, "queries")
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        with self._lock.read(), self._gpu_search:
            fetch = min(k, len(self._backend), self.max_k)
            if fetch and len(queries):
                found, labels = self._backend.search(queries, fetch)
                similarities[:, :fetch] = np.where(labels >= 0, found, -np.inf)
                ids[:, :fetch] = labels
        return similarities, ids

    def save(self, path: Path) -> None:
        """Write an HNSW index to `path` (the graph) and `path`.ids.npy (our ids, tombstones
        as -1), so a restart can read it back instead of building the graph again."""
        if self._hnsw is None:
            raise ValueError(f"only an hnsw index is saved; a {self.kind} one rebuilds in seconds")
        with self._lock.read():
            faiss.write_index(self._hnsw.faiss_index(), str(path))
            np.save(_ids_path(path), self._hnsw.labels())

    def load(self, path: Path) -> None:
        """Replace this (HNSW) index's contents with what `save` wrote at `path`. Raises
        ValueError, or faiss's RuntimeError for a damaged file, and then changes nothing."""
        if self._hnsw is None:
            raise ValueError(f"only an hnsw index is loaded; this one is {self.kind}")
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexHNSWFlat) or index.d != self.dim:
            raise ValueError(f"{path} is not a {self.dim}-d HNSW index")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path} does not use the inner product")
        labels = np.load(_ids_path(path), allow_pickle=False)
        index.hnsw.efSearch = self._ef_search
        with self._lock.write():
            self._hnsw.restore(index, labels)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of present ids, (n, dim) float32. Raises KeyError if one is absent."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        with self._lock.read():
            missing = [i for i in ids.tolist() if i not in self._backend]
            if missing:
                raise KeyError(f"ids not in the index: {missing[:10]}")
            if not len(ids):
                return np.empty((0, self.dim), dtype=np.float32)
            return self._backend.reconstruct(ids)

    def _matrix(self, array: np.ndarray, name: str) -> np.ndarray:
        matrix = np.ascontiguousarray(array, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}), not {matrix.shape}")
        return matrix
