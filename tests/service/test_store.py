"""The store of record on SQLite. `StoreBehaviour` holds the backend-independent tests;
tests/service/test_gallery_postgres.py runs them again on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from service.gallery.store import (
    ChangeKind,
    ModelMismatch,
    NewTemplate,
    Store,
    SubjectNotFound,
    TemplateNotFound,
)

DIM = 8


def templates(rng: np.random.Generator, n: int) -> list[NewTemplate]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        NewTemplate(v, quality=0.5 + i / 10, image_sha256=f"{i:064x}")
        for i, v in enumerate(vectors)
    ]


class StoreBehaviour:
    """Needs a `database_url` fixture naming an empty gallery database."""

    @pytest.fixture
    def rng(self) -> np.random.Generator:
        return np.random.default_rng(0)

    @pytest.fixture
    def store(self, database_url):
        store = Store.open(database_url, "model-a", DIM)
        yield store
        store.close()

    def test_binding_refuses_another_model(self, database_url, store):
        with pytest.raises(ModelMismatch) as refused:
            Store.open(database_url, "model-b", DIM)
        assert (refused.value.bound_model_id, refused.value.model_id) == ("model-a", "model-b")
        assert refused.value.http_status == 409
        with pytest.raises(ModelMismatch, match="8-d against 16-d"):
            Store.open(database_url, "model-a", 16)
        # The same model opens the same gallery again, and the migrations are a no-op.
        Store.open(database_url, "model-a", DIM).close()

    def test_display_names_in_one_lookup(self, store, rng):
        store.add_templates("alice", templates(rng, 1), "Alice", None)
        store.add_templates("bob", templates(rng, 1), None, None)
        names = store.display_names(["alice", "bob", "nobody"])
        assert names == {"alice": "Alice", "bob": None}  # the unknown id is simply absent
        assert store.display_names([]) == {}

    def test_enroll_creates_the_subject_and_logs_one_change_per_template(self, store, rng):
        new = templates(rng, 3)
        result = store.add_templates("alice", new, "Alice", {"team": "red"})
        assert len(result.template_ids) == 3
        assert result.previous_seq == 0
        detail = store.get_subject("alice")
        assert detail.subject.display_name == "Alice"
        assert detail.subject.metadata == {"team": "red"}
        assert detail.subject.template_count == 3
        assert [t.id for t in detail.templates] == list(result.template_ids)
        assert [t.quality for t in detail.templates] == pytest.approx([0.5, 0.6, 0.7])
        assert detail.templates[1].image_sha256 == f"{1:064x}"
        assert {t.model_id for t in detail.templates} == {"model-a"}
        assert detail.subject.created_at.tzinfo is not None

        changes = store.changes_since(0)
        assert [c.kind for c in changes] == [ChangeKind.enroll] * 3
        assert [c.template_id for c in changes] == list(result.template_ids)
        assert changes[-1].seq == result.seq == store.max_seq()

    def test_enroll_again_keeps_or_replaces_the_subject_fields(self, store, rng):
        store.add_templates("bob", templates(rng, 1), "Bob", {"a": 1})
        store.add_templates("bob", templates(rng, 1))
        subject = store.get_subject("bob").subject
        assert (subject.display_name, subject.metadata) == ("Bob", {"a": 1})
        store.add_templates("bob", templates(rng, 1), "Robert", {"b": 2})
        subject = store.get_subject("bob").subject
        assert (subject.display_name, subject.metadata, subject.template_count) == (
            "Robert",
            {"b": 2},
            3,
        )

    def test_bad_input_writes_nothing(self, store, rng):
        with pytest.raises(ValueError, match="shape"):
            store.add_templates("x", [*templates(rng, 2), NewTemplate(np.ones(DIM + 1))])
        with pytest.raises(ValueError, match="NaN"):
            store.add_templates("x", [NewTemplate(np.full(DIM, np.nan))])
        with pytest.raises(ValueError, match="JSON"):
            store.add_templates("x", templates(rng, 1), metadata={"when": object()})
        assert store.counts().subjects == 0
        assert store.changes_since(0) == []

    def test_delete_subject_removes_its_templates(self, store, rng):
        kept = store.add_templates("keep", templates(rng, 2))
        gone = store.add_templates("gone", templates(rng, 3))
        result = store.delete_subject("gone")
        assert result.template_ids == gone.template_ids
        with pytest.raises(SubjectNotFound):
            store.get_subject("gone")
        with pytest.raises(SubjectNotFound):
            store.delete_subject("gone")
        counts = store.counts()
        assert (counts.subjects, counts.templates) == (1, 2)
        changes = store.changes_since(kept.seq)
        assert [(c.kind, c.template_id) for c in changes[-3:]] == [
            (ChangeKind.delete_subject, i) for i in gone.template_ids
        ]
        # Deleting a subject with no templates left still leaves a trace in the log.
        store.delete_template("keep", kept.template_ids[0])
        store.delete_template("keep", kept.template_ids[1])
        store.delete_subject("keep")
        last = store.changes_since(store.max_seq() - 1)
        assert [(c.kind, c.subject_id, c.template_id) for c in last] == [
            (ChangeKind.delete_subject, "keep", None)
        ]

    def test_delete_template_checks_the_owner(self, store, rng):
        alice = store.add_templates("alice", templates(rng, 2))
        store.add_templates("bob", templates(rng, 1))
        with pytest.raises(TemplateNotFound):
            store.delete_template("bob", alice.template_ids[0])
        with pytest.raises(SubjectNotFound):
            store.delete_template("carol", alice.template_ids[0])
        result = store.delete_template("alice", alice.template_ids[0])
        assert result.template_ids == (alice.template_ids[0],)
        detail = store.get_subject("alice")
        assert [t.id for t in detail.templates] == [alice.template_ids[1]]
        with pytest.raises(TemplateNotFound):
            store.delete_template("alice", alice.template_ids[0])

    def test_template_ids_are_never_reused(self, store, rng):
        first = store.add_templates("a", templates(rng, 2))
        store.delete_subject("a")
        again = store.add_templates("a", templates(rng, 1))
        assert again.template_ids[0] > max(first.template_ids)

    def test_pages_are_ordered_by_code_point_with_a_stable_total(self, store, rng):
        names = ["b", "B", "a", "é", "a2", "Z", "zz", "_x", "0", "ä"]
        for count, name in enumerate(names, start=1):
            store.add_templates(name, templates(rng, count % 3 + 1))
        expected = sorted(names)
        pages = [store.list_subjects(limit=3, offset=offset) for offset in range(0, 12, 3)]
        assert [s.subject_id for page in pages for s in page.subjects] == expected
        assert {page.total for page in pages} == {len(names)}
        assert pages[-1].subjects[-1].subject_id == expected[-1]
        counts = {s.subject_id: s.template_count for page in pages for s in page.subjects}
        assert counts == {name: count % 3 + 1 for count, name in enumerate(names, start=1)}
        # Paging by key does not shift when a subject before the cursor goes away.
        page = store.list_subjects(limit=4)
        store.delete_subject(expected[0])
        after = store.list_subjects(limit=4, after=page.subjects[-1].subject_id)
        assert [s.subject_id for s in after.subjects] == expected[4:8]
        assert after.total == len(names) - 1

    def test_snapshot_streams_every_template_grouped_by_subject(self, store, rng):
        written = {}
        for name, count in [("m", 3), ("c", 2), ("x", 2)]:
            new = templates(rng, count)
            ids = store.add_templates(name, new).template_ids
            written.update({i: (name, t.embedding) for i, t in zip(ids, new, strict=True)})
        with store.embedding_snapshot(chunk_size=3) as snapshot:
            chunks = list(snapshot.chunks)
        assert snapshot.seq == store.max_seq()
        assert [len(c.ids) for c in chunks] == [3, 3, 1]
        subjects = [s for c in chunks for s in c.subject_ids]
        assert subjects == sorted(subjects)
        for chunk in chunks:
            for i, subject, vector in zip(chunk.ids, chunk.subject_ids, chunk.vectors, strict=True):
                assert written[int(i)][0] == subject
                np.testing.assert_array_equal(vector, written[int(i)][1])
        assert sum(len(c.ids) for c in chunks) == len(written)

    def test_templates_by_ids_skips_the_deleted(self, store, rng):
        ids = store.add_templates("a", templates(rng, 3)).template_ids
        store.delete_template("a", ids[1])
        chunk = store.templates_by_ids([*ids, 999_999])
        assert list(chunk.ids) == [ids[0], ids[2]]
        assert chunk.vectors.shape == (2, DIM)

    def test_changes_page_in_seq_order(self, store, rng):
        for i in range(5):
            store.add_templates(f"s{i}", templates(rng, 2))
        first = store.changes_since(0, limit=4)
        rest = store.changes_since(first[-1].seq)
        seqs = [c.seq for c in first + rest]
        assert len(seqs) == 10
        assert seqs == sorted(seqs) and len(set(seqs)) == 10

    def test_concurrent_writers_from_two_stores_all_commit_in_order(self, database_url, store):
        other = Store.open(database_url, "model-a", DIM)
        errors: list[BaseException] = []

        def write(target: Store, prefix: str) -> None:
            rng = np.random.default_rng(len(prefix))
            try:
                for i in range(15):
                    target.add_templates(f"{prefix}{i}", templates(rng, 2))
            except BaseException as error:
                errors.append(error)

        threads = [
            threading.Thread(target=write, args=(target, prefix))
            for target, prefix in [(store, "a"), (other, "b"), (store, "c"), (other, "d")]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        other.close()
        assert not errors
        changes = store.changes_since(0)
        assert len(changes) == 120
        # Writers are serialised: each write's changes are contiguous in the log.
        runs = [c.subject_id for c in changes]
        assert all(runs[i] == runs[i + 1] for i in range(0, 120, 2))
        assert store.counts().templates == 120


class TestStoreSqlite(StoreBehaviour):
    @pytest.fixture
    def database_url(self, tmp_path):
        return f"sqlite:///{tmp_path}/nested/dir/gallery.db"

    def test_sqlite_file_is_durable_and_migrated(self, tmp_path, store, rng):
        path = tmp_path / "nested" / "dir" / "gallery.db"
        assert path.is_file(), "the parent folders are created"
        store.add_templates("a", templates(rng, 1))
        with store._db.engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in (
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "busy_timeout",
                    "page_size",
                )
            }
        assert pragma == {
            "page_size": 8192,
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "foreign_keys": 1,
            "busy_timeout": 30_000,
        }
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]

    def test_refuses_memory_and_unknown_databases(self):
        with pytest.raises(ValueError, match="in-memory"):
            Store.open("sqlite://", "m", DIM)
        with pytest.raises(ValueError, match="unsupported"):
            Store.open("mysql://localhost/gallery", "m", DIM)
