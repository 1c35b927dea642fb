"""The gallery on SQLite: store + index + replica catch-up. `GalleryBehaviour` holds the
backend-independent tests; tests/service/test_gallery_postgres.py runs them on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.gallery import (
    Gallery,
    MatchRule,
    ModelMismatch,
    NewTemplate,
    SubjectNotFound,
    TemplateNotFound,
    snapshot,
)
from service.gallery.store import Store

REPO = Path(__file__).resolve().parents[2]
DIM = 32
MODEL = "model-a"


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def as_templates(vectors: np.ndarray) -> list[NewTemplate]:
    return [NewTemplate(v, quality=1.0, image_sha256="0" * 64) for v in vectors]


def top_subjects(gallery: Gallery, query: np.ndarray, top_k: int = 5, rule="best") -> list[str]:
    return [c.subject_id for c in gallery.identify(query[None], top_k, rule)[0]]


def fill(gallery: Gallery, rng: np.random.Generator, subjects: int, per: int = 2) -> dict:
    """Enroll random subjects; returns subject_id -> their embeddings."""
    enrolled = {}
    for i in range(subjects):
        vectors = unit(rng, per)
        gallery.enroll(f"s{i:03d}", as_templates(vectors))
        enrolled[f"s{i:03d}"] = vectors
    return enrolled


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class GalleryBehaviour:
    """Needs a `database_url` fixture naming an empty gallery database."""

    @pytest.fixture(params=["exact", "hnsw"])
    def kind(self, request) -> str:
        return request.param

    @pytest.fixture
    def gallery(self, database_url, kind):
        with Gallery.open(database_url, MODEL, DIM, kind) as gallery:
            yield gallery

    def test_stats_name_the_index_and_its_search_breadth(self, database_url, kind):
        with Gallery.open(database_url, MODEL, DIM, kind, hnsw_ef_search=300) as gallery:
            stats = gallery.stats()
        assert stats.index_kind == kind
        assert stats.hnsw_ef_search == (300 if kind == "hnsw" else None)

    def test_another_model_is_refused(self, database_url, gallery):
        with pytest.raises(ModelMismatch):
            Gallery.open(database_url, "model-b", DIM)

    def test_enrolled_embedding_identifies_its_subject(self, gallery, kind):
        rng = np.random.default_rng(1)
        enrolled = fill(gallery, rng, 30)
        for subject in ["s000", "s017", "s029"]:
            [candidates] = gallery.identify(enrolled[subject][1:2], top_k=3)
            assert candidates[0].subject_id == subject
            assert candidates[0].similarity == pytest.approx(1.0, abs=1e-5)
            assert len({c.subject_id for c in candidates}) == 3
            ids = [t.id for t in gallery.get_subject(subject).templates]
            assert candidates[0].template_id == ids[1]
        stats = gallery.stats()
        assert (stats.subjects, stats.templates, stats.indexed_templates) == (30, 60, 60)
        assert (stats.index_kind, stats.gpu) == (kind, False)
        assert gallery.in_sync()

    def test_ranking_is_by_subject_not_by_template(self, gallery):
        """A subject with 40 templates near the query must not crowd out the others."""
        rng = np.random.default_rng(2)
        query = unit(rng, 1)[0]
        crowd = query + 0.05 * rng.standard_normal((40, DIM)).astype(np.float32)
        gallery.enroll("crowd", as_templates(crowd))
        fill(gallery, rng, 10)
        [candidates] = gallery.identify(query[None], top_k=4)
        assert candidates[0].subject_id == "crowd"
        assert len(candidates) == 4
        assert len({c.subject_id for c in candidates}) == 4
        similarities = [c.similarity for c in candidates]
        assert similarities == sorted(similarities, reverse=True)

    def test_best_and_mean_rules_differ(self, gallery):
        """'spread' has two templates 60° either side of the query: best 0.5, but their mean
        points straight at it (1.0). 'single' has one template at cosine 0.8."""
        e = np.eye(DIM, dtype=np.float32)
        query = e[0]
        angle = np.pi / 3
        spread = [
            np.cos(angle) * e[0] + np.sin(angle) * e[1],
            np.cos(angle) * e[0] - np.sin(angle) * e[1],
        ]
        gallery.enroll("spread", as_templates(np.stack(spread)))
        gallery.enroll("single", as_templates((0.8 * e[0] + 0.6 * e[2])[None]))

        [best] = gallery.identify(query[None], top_k=2, rule=MatchRule.best)
        assert [(c.subject_id, round(c.similarity, 4)) for c in best] == [
            ("single", 0.8),
            ("spread", 0.5),
        ]
        [mean] = gallery.identify(query[None], top_k=2, rule="mean")
        assert [(c.subject_id, round(c.similarity, 4)) for c in mean] == [
            ("spread", 1.0),
            ("single", 0.8),
        ]
        assert all(c.template_id is None for c in mean)

        # The mean follows the subject's templates: with one left, it is that template.
        first = gallery.get_subject("spread").templates[0].id
        gallery.delete_template("spread", first)
        [mean] = gallery.identify(query[None], top_k=2, rule="mean")
        assert [(c.subject_id, round(c.similarity, 4)) for c in mean] == [
            ("single", 0.8),
            ("spread", 0.5),
        ]

    def test_mean_rule_matches_brute_force(self, gallery):
        rng = np.random.default_rng(3)
        enrolled = fill(gallery, rng, 25, per=3)
        queries = unit(rng, 5)
        names = sorted(enrolled)
        means = np.stack([enrolled[n].sum(axis=0) for n in names])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        truth = queries @ means.T
        results = gallery.identify(queries, top_k=3, rule="mean")
        for row, candidates in zip(truth, results, strict=True):
            order = np.argsort(-row)[:3]
            assert [c.subject_id for c in candidates] == [names[i] for i in order]
            assert [c.similarity for c in candidates] == pytest.approx(row[order], abs=1e-5)

    def test_means_survive_a_reload_in_small_chunks(self, database_url, kind, monkeypatch):
        """On open, subjects whose templates straddle chunk boundaries still get the mean of
        all their templates."""
        rng = np.random.default_rng(12)
        with Gallery.open(database_url, MODEL, DIM, kind) as gallery:
            enrolled = {}
            for i, count in enumerate([1, 5, 2, 7, 3, 3, 1, 4]):
                enrolled[f"s{i}"] = unit(rng, count)
                gallery.enroll(f"s{i}", as_templates(enrolled[f"s{i}"]))
        monkeypatch.setattr("service.gallery.state.LOAD_CHUNK", 3)
        queries = unit(rng, 6)
        names = sorted(enrolled)
        means = np.stack([enrolled[n].sum(axis=0) for n in names])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        truth = queries @ means.T
        with Gallery.open(database_url, MODEL, DIM, kind) as gallery:
            results = gallery.identify(queries, top_k=8, rule="mean")
            assert gallery.stats().indexed_templates == 26
        for row, candidates in zip(truth, results, strict=True):
            assert {c.subject_id: c.similarity for c in candidates} == pytest.approx(
                dict(zip(names, row.tolist(), strict=True)), abs=1e-5
            )

    def test_deleted_subject_disappears_everywhere(self, gallery):
        rng = np.random.default_rng(4)
        enrolled = fill(gallery, rng, 12)
        assert gallery.delete_subject("s005") == 2
        for rule in ("best", "mean"):
            assert "s005" not in top_subjects(gallery, enrolled["s005"][0], 11, rule)
        listed = [s.subject_id for s in gallery.list_subjects(limit=100).subjects]
        assert "s005" not in listed and len(listed) == 11
        with pytest.raises(SubjectNotFound):
            gallery.get_subject("s005")
        with pytest.raises(SubjectNotFound):
            gallery.delete_subject("s005")
        with pytest.raises(TemplateNotFound):
            gallery.delete_template("s006", 10**9)
        # Deleting every template leaves a subject that lists but never matches.
        for template in gallery.get_subject("s006").templates:
            gallery.delete_template("s006", template.id)
        assert gallery.get_subject("s006").subject.template_count == 0
        for rule in ("best", "mean"):
            assert "s006" not in top_subjects(gallery, enrolled["s006"][0], 11, rule)
        # A deleted subject id can be enrolled again, from scratch.
        gallery.enroll("s005", as_templates(enrolled["s006"][:1]))
        assert top_subjects(gallery, enrolled["s006"][0], 1) == ["s005"]
        assert top_subjects(gallery, enrolled["s006"][0], 1, "mean") == ["s005"]
        assert gallery.in_sync()

    def test_pages_cover_every_subject_once(self, gallery):
        fill(gallery, np.random.default_rng(5), 23, per=1)
        seen = []
        for offset in range(0, 30, 7):
            page = gallery.list_subjects(limit=7, offset=offset)
            assert page.total == 23
            seen += [s.subject_id for s in page.subjects]
        assert seen == [f"s{i:03d}" for i in range(23)]

    def test_reopening_rebuilds_the_same_index(self, database_url, kind):
        rng = np.random.default_rng(6)
        queries = unit(rng, 20)
        with Gallery.open(database_url, MODEL, DIM, kind) as gallery:
            enrolled = fill(gallery, rng, 40, per=3)
            gallery.delete_subject("s010")
            gallery.delete_template("s011", gallery.get_subject("s011").templates[0].id)
            queries = np.concatenate([queries, enrolled["s012"]])
            before = {rule: gallery.identify(queries, 5, rule) for rule in ("best", "mean")}
            stats = gallery.stats()
        with Gallery.open(database_url, MODEL, DIM, kind) as gallery:
            after = {rule: gallery.identify(queries, 5, rule) for rule in ("best", "mean")}
            assert gallery.stats() == stats
            assert gallery.in_sync()
        for rule in ("best", "mean"):
            for old, new in zip(before[rule], after[rule], strict=True):
                assert [(c.subject_id, c.template_id) for c in old] == [
                    (c.subject_id, c.template_id) for c in new
                ]
                assert [c.similarity for c in old] == pytest.approx(
                    [c.similarity for c in new], abs=1e-5
                )

    def test_replica_catches_up_with_enrolls_and_deletes(self, database_url, kind):
        rng = np.random.default_rng(7)
        with (
            Gallery.open(database_url, MODEL, DIM, kind) as a,
            Gallery.open(database_url, MODEL, DIM, kind) as b,
        ):
            enrolled = fill(a, rng, 5)
            assert b.identify(enrolled["s003"][:1], 1) == [[]], "b has not caught up yet"
            assert not b.in_sync()
            assert b.catch_up() == 10  # one change per template
            assert b.catch_up() == 0
            assert a.catch_up() == 0, "a's own writes are applied already"
            assert top_subjects(b, enrolled["s003"][0], 1) == ["s003"]
            assert top_subjects(b, enrolled["s003"][0], 1, "mean") == ["s003"]

            a.delete_subject("s003")
            a.delete_template("s004", a.get_subject("s004").templates[0].id)
            assert b.catch_up() == 3
            for rule in ("best", "mean"):
                assert "s003" not in top_subjects(b, enrolled["s003"][0], 5, rule)
            # The deleted template of s004 is gone from b; its other one still matches.
            remaining = {t.id for t in a.get_subject("s004").templates}
            for candidates in b.identify(enrolled["s004"], 5):
                assert {c.template_id for c in candidates if c.subject_id == "s004"} == remaining

            # b writes, then a writes: a's write finds b's change before its own in the log
            # and replays both, without an explicit catch_up.
            from_b, from_a = unit(rng, 1), unit(rng, 1)
            b.enroll("from-b", as_templates(from_b))
            a.enroll("from-a", as_templates(from_a))
            assert top_subjects(a, from_b[0], 1) == ["from-b"]
            assert top_subjects(a, from_a[0], 1) == ["from-a"]
            assert a.in_sync() and not b.in_sync()
            assert b.catch_up() == 1
            assert a.in_sync() and b.in_sync()
            assert a.stats().indexed_templates == b.stats().indexed_templates == 9

    def test_enroll_and_delete_of_the_same_template_between_catch_ups(self, database_url):
        """b sees an enroll and its delete in one batch: the template must not appear."""
        rng = np.random.default_rng(8)
        with (
            Gallery.open(database_url, MODEL, DIM) as a,
            Gallery.open(database_url, MODEL, DIM) as b,
        ):
            vectors = unit(rng, 2)
            ids = a.enroll("x", as_templates(vectors))
            a.delete_template("x", ids[0])
            assert b.catch_up() == 3
            [candidates] = b.identify(vectors[:1], 5)
            assert [c.template_id for c in candidates] == [ids[1]]
            assert b.in_sync()

    def test_background_sync_applies_other_replicas_changes(self, database_url):
        rng = np.random.default_rng(9)
        with (
            Gallery.open(database_url, MODEL, DIM) as a,
            Gallery.open(database_url, MODEL, DIM) as b,
        ):
            b.start_sync(0.05)
            with pytest.raises(RuntimeError):
                b.start_sync(0.05)
            vectors = unit(rng, 1)
            a.enroll("synced", as_templates(vectors))
            assert wait_until(lambda: top_subjects(b, vectors[0], 1) == ["synced"])
            a.delete_subject("synced")
            assert wait_until(lambda: top_subjects(b, vectors[0], 1) == [])
            b.stop_sync()
            a.enroll("later", as_templates(vectors))
            time.sleep(0.2)
            assert top_subjects(b, vectors[0], 1) == [], "stopped: no more catch-up"

    def test_invalid_embeddings_are_refused_before_any_write(self, gallery):
        with pytest.raises(ValueError, match="zero"):
            gallery.enroll("z", [NewTemplate(np.zeros(DIM, np.float32))])
        with pytest.raises(ValueError, match="shape"):
            gallery.enroll("z", [NewTemplate(np.ones(DIM + 1, np.float32))])
        with pytest.raises(ValueError, match="at least one"):
            gallery.enroll("z", [])
        with pytest.raises(ValueError, match="shape"):
            gallery.identify(np.ones(DIM, np.float32), 3)
        with pytest.raises(ValueError, match="top_k"):
            gallery.identify(np.ones((1, DIM), np.float32), 0)
        assert gallery.stats().subjects == 0
        assert gallery.identify(np.ones((2, DIM), np.float32), 3) == [[], []]

    # HNSW snapshots (service/gallery/snapshot.py)

    def test_a_reopened_hnsw_gallery_reads_its_snapshot_and_replays_later_changes(
        self, database_url, tmp_path
    ):
        rng = np.random.default_rng(20)
        snapshots = tmp_path / "index"
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as a:
            assert a.loaded_from == "store"
            enrolled = fill(a, rng, 30)
            for gone in ("s001", "s002"):
                a.delete_subject(gone)
                del enrolled[gone]
        assert snapshot.newest(snapshots) is not None
        # Another replica writes while this one is down: the snapshot is now behind the store.
        with Gallery.open(database_url, MODEL, DIM, "hnsw") as other:
            for i in range(5):
                vectors = unit(rng, 2)
                other.enroll(f"late{i}", as_templates(vectors))
                enrolled[f"late{i}"] = vectors
            for gone in ("s003", "late0"):
                other.delete_subject(gone)
                del enrolled[gone]
            template = min(t.id for t in other.get_subject("s004").templates)
            other.delete_template("s004", template)
            enrolled["s004"] = enrolled["s004"][1:]
        with (
            Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as b,
            Gallery.open(database_url, MODEL, DIM, "hnsw") as rebuilt,
        ):
            assert b.loaded_from == "snapshot" and rebuilt.loaded_from == "store"
            assert b.in_sync()
            assert b.stats().indexed_templates == sum(len(v) for v in enrolled.values())
            queries = np.concatenate(list(enrolled.values()))
            for rule in ("best", "mean"):
                # Same candidates in the same order; the similarities may differ in the last
                # float32 bit, as faiss sums in a different order for a read-back graph on
                # some CPUs (this 2-core AMD EPYC with AVX2; not the AVX-512 Xeon).
                got, want = b.identify(queries, 3, rule), rebuilt.identify(queries, 3, rule)
                assert [[(c.subject_id, c.template_id) for c in row] for row in got] == [
                    [(c.subject_id, c.template_id) for c in row] for row in want
                ]
                got_similarity = [[c.similarity for c in row] for row in got]
                want_similarity = [[c.similarity for c in row] for row in want]
                assert np.allclose(got_similarity, want_similarity, rtol=0, atol=1e-6)
            for subject, vectors in enrolled.items():
                for vector in vectors:
                    assert top_subjects(b, vector, 1) == [subject]
            # It goes on taking writes, and a delete lands in the restored graph.
            b.delete_subject("s005")
            assert "s005" not in top_subjects(b, enrolled["s005"][0], 30)

    def test_a_syncing_replica_snapshots_every_so_many_changes(self, database_url, tmp_path):
        rng = np.random.default_rng(21)
        snapshots = tmp_path / "index"

        def newest_seq() -> int:
            return int(snapshot.newest(snapshots).name.removeprefix(snapshot.PREFIX))

        def wait_for(condition) -> None:
            deadline = time.monotonic() + 10
            while not condition():
                assert time.monotonic() < deadline, "no snapshot came"
                time.sleep(0.01)

        a = Gallery.open(
            database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots, snapshot_every=10
        )
        try:
            a.start_sync(0.02)
            assert newest_seq() == 0  # written after the (empty) rebuild
            enrolled = fill(a, rng, 4)  # 8 changes: not yet due
            time.sleep(0.3)
            assert newest_seq() == 0
            # One write of 4 templates takes seq 8 -> 12 at once; two writes of 2 would let
            # the sync loop snapshot at 10 in between.
            enrolled["t0"] = unit(rng, 4)
            a.enroll("t0", as_templates(enrolled["t0"]))
            wait_for(lambda: newest_seq() >= 10)
            assert newest_seq() == a.last_seq == 12
            # Writes after it, from another replica, are caught up but not yet snapshotted.
            with Gallery.open(database_url, MODEL, DIM, "hnsw") as other:
                other.delete_subject("s000")
                del enrolled["s000"]
                enrolled["late"] = unit(rng, 3)
                other.enroll("late", as_templates(enrolled["late"]))
            wait_for(lambda: a.in_sync())
            assert newest_seq() == 12
            # A replica started now (as after a crash of `a`) reads seq 12 and replays 5.
            with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as b:
                assert b.loaded_from == "snapshot" and b.last_seq == a.last_seq
                for subject, vectors in enrolled.items():
                    for vector in vectors:
                        assert top_subjects(b, vector, 1) == [subject]
                assert "s000" not in top_subjects(b, unit(rng, 1)[0], 30)
        finally:
            a.close()

    def test_snapshot_every_must_be_positive(self, database_url, tmp_path):
        with pytest.raises(ValueError, match="snapshot_every"):
            Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=tmp_path, snapshot_every=0)

    def test_a_snapshot_that_does_not_match_the_store_is_not_used(self, database_url, tmp_path):
        rng = np.random.default_rng(21)
        snapshots = tmp_path / "index"
        # Another database whose change log is as long, with other subjects in it.
        foreign = f"sqlite:///{tmp_path}/foreign.db"
        with Gallery.open(foreign, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as elsewhere:
            fill(elsewhere, rng, 12)
        with Gallery.open(database_url, MODEL, DIM, "hnsw") as gallery:
            ours = fill(gallery, rng, 12)
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as gallery:
            assert gallery.loaded_from == "store"
            assert top_subjects(gallery, ours["s007"][0], 1) == ["s007"]
            assert gallery.stats().indexed_templates == 24
        # Written for another model, or ahead of the store (a reset database): not used either.
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as gallery:
            assert gallery.loaded_from == "snapshot"
            fill(gallery, rng, 3)
        with Gallery.open(
            f"sqlite:///{tmp_path}/empty.db", MODEL, DIM, "hnsw", snapshot_dir=snapshots
        ) as empty:
            assert empty.loaded_from == "store" and empty.stats().indexed_templates == 0

    @pytest.mark.parametrize("damage", ["truncated graph", "lost ids", "no manifest"])
    def test_a_damaged_snapshot_is_ignored_and_the_index_rebuilt(
        self, database_url, tmp_path, damage
    ):
        rng = np.random.default_rng(22)
        snapshots = tmp_path / "index"
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as gallery:
            enrolled = fill(gallery, rng, 10)
        folder = snapshot.newest(snapshots)
        if damage == "truncated graph":
            graph = folder / "templates.faiss"
            graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
        elif damage == "lost ids":
            (folder / "means.faiss.ids.npy").unlink()
        else:
            (folder / "manifest.json").unlink()
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as gallery:
            assert gallery.loaded_from == "store"
            assert top_subjects(gallery, enrolled["s004"][1], 1) == ["s004"]
        # The rebuild wrote a good snapshot in place of the damaged one.
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as gallery:
            assert gallery.loaded_from == "snapshot"
        assert [p.name for p in snapshots.iterdir()] == [snapshot.newest(snapshots).name]

    def test_writes_do_not_wait_for_a_snapshot_to_reach_the_disk(
        self, database_url, tmp_path, monkeypatch
    ):
        """A slow disk: every fsync takes 0.5 s. The sync thread's snapshot holds the write
        lock only while it stages the files, so an enrolment meanwhile is not held up."""
        rng = np.random.default_rng(24)
        snapshots = tmp_path / "index"
        fsyncing = threading.Event()
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            fsyncing.set()
            time.sleep(0.5)
            real_fsync(fd)

        a = Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots, snapshot_every=1)
        try:
            monkeypatch.setattr(snapshot.os, "fsync", slow_fsync)
            a.start_sync(0.02)
            a.enroll("first", as_templates(unit(rng, 1)))
            assert fsyncing.wait(5), "no snapshot came"
            started = time.monotonic()
            a.enroll("second", as_templates(unit(rng, 1)))
            assert time.monotonic() - started < 1.0  # 2.5 s if it waited for the fsyncs
            # The staged snapshot still lands, and the next one follows it.
            assert wait_until(lambda: snapshot.newest(snapshots).name == f"{snapshot.PREFIX}2")
            assert not [p for p in snapshots.iterdir() if p.name.startswith(".partial-")]
        finally:
            a.close()

    def test_an_interrupted_snapshot_write_is_ignored_then_cleared(self, database_url, tmp_path):
        rng = np.random.default_rng(25)
        snapshots = tmp_path / "index"
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as a:
            enrolled = fill(a, rng, 3)
        written = snapshot.newest(snapshots)
        with Gallery.open(database_url, MODEL, DIM, "hnsw") as other:
            enrolled["late"] = unit(rng, 1)
            other.enroll("late", as_templates(enrolled["late"]))
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as b:
            # A crash between stage and publish leaves a complete folder under a hidden name.
            with b._writing:
                assert b._stage_snapshot_locked() is not None
            assert snapshot.newest(snapshots) == written  # the staged one is not visible
        # `b` published its own on close; that publish cleared the orphan.
        assert [p.name for p in snapshots.iterdir()] == [f"{snapshot.PREFIX}7"]
        with Gallery.open(database_url, MODEL, DIM, "hnsw", snapshot_dir=snapshots) as c:
            assert c.loaded_from == "snapshot" and c.last_seq == 7
            assert top_subjects(c, enrolled["late"][0], 1) == ["late"]

    def test_an_exact_index_is_not_snapshotted(self, database_url, tmp_path):
        with Gallery.open(database_url, MODEL, DIM, "exact", snapshot_dir=tmp_path / "i") as g:
            fill(g, np.random.default_rng(23), 3)
        assert not (tmp_path / "i").exists()


class TestGallerySqlite(GalleryBehaviour):
    @pytest.fixture
    def database_url(self, tmp_path):
        return f"sqlite:///{tmp_path}/gallery.db"

    def test_no_search_returns_a_subject_after_its_delete_returned(self, database_url):
        """Threads enroll, delete and identify at once. An identify that *started* after a
        delete returned must not return that subject, even though the queries are the deleted
        subjects' own embeddings (they would rank first if still indexed)."""
        rng = np.random.default_rng(10)
        with Gallery.open(database_url, MODEL, DIM) as gallery:
            victims = fill(gallery, rng, 40)
            queries = np.stack([v[0] for v in victims.values()])
            deleted_at: dict[str, float] = {}
            violations: list[tuple[str, float, float]] = []
            errors: list[BaseException] = []
            done = threading.Event()
            searches = [0]

            def delete() -> None:
                for subject in victims:
                    gallery.delete_subject(subject)
                    deleted_at[subject] = time.monotonic()
                    time.sleep(0.002)

            def enroll() -> None:
                local = np.random.default_rng(11)
                for i in range(40):
                    gallery.enroll(f"new{i:03d}", as_templates(unit(local, 2)))

            def identify() -> None:
                try:
                    while not done.is_set():
                        started = time.monotonic()
                        for rule in ("best", "mean"):
                            for candidates in gallery.identify(queries, 3, rule):
                                for c in candidates:
                                    gone = deleted_at.get(c.subject_id)
                                    if gone is not None and gone < started:
                                        violations.append((c.subject_id, gone, started))
                        searches[0] += 1
                except BaseException as error:
                    errors.append(error)

            readers = [threading.Thread(target=identify) for _ in range(3)]
            writers = [threading.Thread(target=delete), threading.Thread(target=enroll)]
            for thread in readers + writers:
                thread.start()
            for thread in writers:
                thread.join()
            done.set()
            for thread in readers:
                thread.join()
            assert not errors
            assert not violations
            assert searches[0] > 10, "the searches really ran alongside the writes"
            assert gallery.stats().indexed_templates == 80
            assert gallery.in_sync()

    def test_acknowledged_enrolls_survive_kill_9(self, tmp_path):
        url = f"sqlite:///{tmp_path}/gallery.db"
        script = (
            "import sys, numpy as np\n"
            "from service.gallery import Gallery, NewTemplate\n"
            f"gallery = Gallery.open(sys.argv[1], {MODEL!r}, {DIM})\n"
            "rng = np.random.default_rng(0)\n"
            "for i in range(100_000):\n"
            f"    vectors = rng.standard_normal((2, {DIM})).astype(np.float32)\n"
            "    ids = gallery.enroll(f's{i}', [NewTemplate(v) for v in vectors])\n"
            "    print(*ids, flush=True)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(
            [sys.executable, "-c", script, url],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        acknowledged: list[int] = []
        assert child.stdout is not None
        for line in child.stdout:
            acknowledged += [int(i) for i in line.split()]
            if len(acknowledged) >= 60:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Lines printed before the kill were acknowledged too; a torn last line was not.
        rest = child.stdout.read()
        complete = rest[: rest.rfind("\n") + 1]
        acknowledged += [int(i) for i in complete.split()]
        assert child.returncode == -signal.SIGKILL

        store = Store.open(url, MODEL, DIM)
        try:
            assert set(store.templates_by_ids(acknowledged).ids) == set(acknowledged)
            stored = store.counts().templates
        finally:
            store.close()
        assert stored >= len(acknowledged)
        with Gallery.open(url, MODEL, DIM) as gallery:
            assert gallery.stats().indexed_templates == stored
            assert gallery.in_sync()
