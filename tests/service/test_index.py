"""The FAISS index: exact and HNSW kinds, our ids, removal and HNSW tombstones."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.gallery.index import IndexKind, VectorIndex

DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def filled(kind: str, n: int, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    # Sparse, unordered ids: nothing may assume ids are positions.
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 7 + 1000)
    index = VectorIndex(DIM, kind)
    index.add(ids, vectors)
    return index, ids, vectors


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
class TestBothKinds:
    def test_own_vector_comes_first_with_cosine_one(self, kind):
        index, ids, vectors = filled(kind, 300)
        similarities, found = index.search(vectors[:20], 5)
        assert (found[:, 0] == ids[:20]).all()
        assert similarities[:, 0] == pytest.approx(1.0, abs=1e-5)
        assert (np.diff(similarities, axis=1) <= 1e-6).all(), "best first"
        assert not index.on_gpu
        assert index.kind == IndexKind(kind)

    def test_empty_slots_are_minus_one(self, kind):
        index, ids, vectors = filled(kind, 3)
        similarities, found = index.search(vectors[:2], 5)
        assert sorted(found[0, :3]) == sorted(ids)
        assert (found[:, 3:] == -1).all()
        assert np.isneginf(similarities[:, 3:]).all()
        empty = VectorIndex(DIM, kind)
        similarities, found = empty.search(vectors[:2], 4)
        assert found.shape == (2, 4) and (found == -1).all()

    def test_removed_ids_are_gone_and_can_come_back(self, kind):
        index, ids, vectors = filled(kind, 200)
        assert index.remove(np.array([ids[0], ids[1], 123456789])) == 2
        assert len(index) == 198
        assert ids[0] not in index and ids[2] in index
        _, found = index.search(vectors[:2], 10)
        assert ids[0] not in found and ids[1] not in found
        # The same id again, now with another vector: found once, for the new vector.
        index.add(ids[:1], vectors[5:6])
        similarities, found = index.search(vectors[5:6], 3)
        assert set(found[0, :2]) == {ids[0], ids[5]}
        assert list(found[0]).count(ids[0]) == 1
        assert similarities[0, :2] == pytest.approx(1.0, abs=1e-5)

    def test_reconstruct_returns_what_was_added(self, kind):
        index, ids, vectors = filled(kind, 50)
        np.testing.assert_allclose(index.reconstruct(ids[[3, 7]]), vectors[[3, 7]], atol=1e-6)
        with pytest.raises(KeyError):
            index.reconstruct(np.array([-5]))

    def test_refuses_duplicate_ids_and_wrong_shapes(self, kind):
        index, ids, vectors = filled(kind, 10)
        with pytest.raises(ValueError, match="already"):
            index.add(ids[:1], vectors[:1])
        with pytest.raises(ValueError, match="twice"):
            index.add(np.array([1, 1]), vectors[:2])
        with pytest.raises(ValueError, match="shape"):
            index.add(np.array([1]), np.zeros((1, DIM + 1), np.float32))
        with pytest.raises(ValueError, match="shape"):
            index.search(vectors[0], 3)
        assert len(index) == 10
        assert sorted(index.ids()) == sorted(ids)


def test_hnsw_recall_at_1_matches_exact():
    rng = np.random.default_rng(1)
    vectors = unit(rng, 2000)
    ids = np.arange(2000, dtype=np.int64)
    exact, hnsw = VectorIndex(DIM, "exact"), VectorIndex(DIM, "hnsw")
    exact.add(ids, vectors)
    hnsw.add(ids, vectors)
    # Random directions, not gallery members: the hard case for a graph search.
    queries = unit(rng, 500)
    _, truth = exact.search(queries, 1)
    _, approx = hnsw.search(queries, 1)
    recall = float((truth[:, 0] == approx[:, 0]).mean())
    assert recall >= 0.95, recall


def test_hnsw_ef_search_trades_recall_and_reaches_a_rebuilt_graph():
    rng = np.random.default_rng(4)
    vectors = unit(rng, 4000)
    ids = np.arange(4000, dtype=np.int64)
    queries = unit(rng, 400)
    hnsw = VectorIndex(DIM, "hnsw", ef_search=1)
    hnsw.add(ids, vectors)

    def recall(live: np.ndarray) -> float:
        exact = VectorIndex(DIM, "exact")
        exact.add(live, vectors[live])
        _, truth = exact.search(queries, 1)
        _, approx = hnsw.search(queries, 1)
        return float((truth[:, 0] == approx[:, 0]).mean())

    narrow = recall(ids)
    hnsw.ef_search = 256
    wide = recall(ids)
    assert wide >= 0.98 and narrow < wide - 0.1, (narrow, wide)

    # A quarter removed passes the tombstone limit: the graph is rebuilt from the live vectors
    # and must keep the breadth that was set, and take a new one.
    live = ids[1000:]
    hnsw.remove(ids[:1000])
    assert hnsw.tombstones == 0 and hnsw.ef_search == 256
    assert recall(live) >= 0.98
    hnsw.ef_search = 1
    assert recall(live) < wide - 0.1
    with pytest.raises(ValueError):
        hnsw.ef_search = 0


def test_hnsw_tombstones_never_come_back_and_results_stay_full():
    rng = np.random.default_rng(2)
    index, ids, vectors = filled("hnsw", 2000, seed=2)
    removed = rng.choice(ids, 300, replace=False)
    assert index.remove(removed) == 300
    assert index.tombstones == 300, "under 20% dead: no rebuild yet"
    queries = np.concatenate([vectors[:100], unit(rng, 100)])
    _, found = index.search(queries, 10)
    assert not np.isin(found, removed).any()
    assert (found >= 0).all(), "top-k stays full despite the tombstones"
    assert all(len(set(row)) == 10 for row in found.tolist())

    more = rng.choice(np.setdiff1d(ids, removed), 150, replace=False)
    index.remove(more)
    assert index.tombstones == 0, "past 20% dead the graph is rebuilt"
    assert len(index) == 1550
    gone = np.concatenate([removed, more])
    _, found = index.search(queries, 10)
    assert not np.isin(found, gone).any()
    assert (found >= 0).all()
    # The rebuild kept each live id with its own vector.
    row_of = {int(i): row for row, i in enumerate(ids)}
    live = np.setdiff1d(ids, gone)[:50]
    rows = [row_of[int(i)] for i in live]
    np.testing.assert_allclose(index.reconstruct(live), vectors[rows], atol=1e-6)


def test_hnsw_refetches_when_the_dead_cluster_around_a_query():
    """The first over-fetch assumes tombstones spread evenly; here the query's 60 nearest
    neighbours are all dead (3% of the graph), so only a second, larger search fills top 10."""
    index, ids, vectors = filled("hnsw", 2000, seed=3)
    exact = VectorIndex(DIM, "exact")
    exact.add(ids, vectors)
    query = vectors[:1]
    _, nearest = exact.search(query, 60)
    index.remove(nearest[0])
    exact.remove(nearest[0])
    _, found = index.search(query, 10)
    assert (found >= 0).all()
    assert not np.isin(found, nearest).any()
    _, truth = exact.search(query, 10)
    assert len(set(found[0]) & set(truth[0])) >= 8


def test_searches_run_while_writes_happen():
    """Readers and a writer in threads: every result is a live id or -1, and no thread fails."""
    index, ids, vectors = filled("exact", 500, seed=4)
    rng = np.random.default_rng(4)
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                _, found = index.search(vectors[:8], 5)
                assert ((found >= 0) | (found == -1)).all()
        except BaseException as error:
            errors.append(error)

    readers = [threading.Thread(target=search) for _ in range(3)]
    for reader in readers:
        reader.start()
    extra = unit(rng, 200)
    for i in range(200):
        index.add(np.array([10_000 + i]), extra[i : i + 1])
        index.remove(np.array([ids[i]]))
    done.set()
    for reader in readers:
        reader.join()
    assert not errors
    assert len(index) == 500
