"""The gallery's store of record: subjects, their templates and a change log, in SQL.

SQLite (a file; the default) or PostgreSQL (`postgresql+psycopg://...`), through SQLAlchemy
Core, reached through `service/gallery/database.py` (engines, the single writer, migrations).
The schema is Alembic's (`service/gallery/migrations`), upgraded to head when the store opens.

Every write runs in one transaction that also appends its rows to `changes`, one row per
template touched, so replicas can replay the log. Writers are serialised, which makes
`changes.seq` grow in commit order: a replica that has read every change up to seq N never
later sees a change with a smaller seq commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service.gallery.database import Database
from service.gallery.errors import ModelMismatch, SubjectNotFound, TemplateNotFound
from service.gallery.records import (
    Change,
    ChangeKind,
    Counts,
    EmbeddingChunk,
    NewTemplate,
    Snapshot,
    Subject,
    SubjectDetail,
    SubjectPage,
    TemplateRecord,
    WriteResult,
)
from service.gallery.schema import RECORD_COLUMNS, changes, gallery_meta, subjects, templates

# Bound on bound parameters per IN (...) query; SQLite allows 32766.
IN_CHUNK = 1000


def _utc(moment: datetime) -> datetime:
    # SQLite returns the naive UTC time it was given; PostgreSQL one in the session's zone.
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _dump_metadata(metadata: dict[str, Any]) -> str:
    if not isinstance(metadata, dict):
        raise ValueError("subject metadata must be a JSON object (a dict)")
    try:
        return json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"subject metadata is not JSON: {error}") from error


def _subject(row: sa.Row, template_count: int) -> Subject:
    return Subject(
        subject_id=row.subject_id,
        display_name=row.display_name,
        metadata=json.loads(row.metadata),
        created_at=_utc(row.created_at),
        template_count=template_count,
    )


class Store:
    """One gallery database. Thread-safe: every method runs its own short transaction."""

    def __init__(self, database: Database, model_id: str, embedding_dim: int) -> None:
        self._db = database
        self.model_id = model_id
        self.embedding_dim = embedding_dim
        self.created_at = ""  # set by _bind

    @classmethod
    def open(cls, database_url: str, model_id: str, embedding_dim: int) -> Store:
        """Connect, migrate the schema to head and bind the gallery to `model_id`.

        Raises ModelMismatch when the gallery already holds another model's embeddings.
        """
        if not model_id:
            raise ValueError("model_id must not be empty")
        if embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, not {embedding_dim}")
        database = Database.connect(database_url)
        store = cls(database, model_id, embedding_dim)
        try:
            database.migrate()
            store._bind()
        except BaseException:
            database.dispose()
            raise
        return store

    def close(self) -> None:
        self._db.dispose()

    def _bind(self) -> None:
        with self._db.write() as connection:
            row = connection.execute(sa.select(gallery_meta)).first()
            if row is None:
                connection.execute(
                    gallery_meta.insert().values(
                        id=1,
                        model_id=self.model_id,
                        embedding_dim=self.embedding_dim,
                        created_at=_now(),
                    )
                )
                row = connection.execute(sa.select(gallery_meta)).one()
            elif (row.model_id, row.embedding_dim) != (self.model_id, self.embedding_dim):
                raise ModelMismatch(
                    row.model_id, self.model_id, row.embedding_dim, self.embedding_dim
                )
        # When this gallery was created, as the database gives it back: what tells this store
        # from one recreated under the same URL (service/gallery/snapshot.py relies on it).
        self.created_at = row.created_at.isoformat()

    def _log(
        self,
        connection: Connection,
        kind: ChangeKind,
        subject_id: str,
        template_ids: Sequence[int | None],
    ) -> tuple[int, int]:
        """Append one change per template; returns (seq before, last seq appended)."""
        previous = connection.execute(sa.select(sa.func.max(changes.c.seq))).scalar() or 0
        at = _now()
        rows = [
            {"kind": kind.value, "subject_id": subject_id, "template_id": template_id, "at": at}
            for template_id in template_ids
        ]
        seqs = connection.execute(changes.insert().returning(changes.c.seq), rows).scalars()
        return previous, max(seqs)

    def _vector_bytes(self, embedding: np.ndarray) -> bytes:
        vector = np.asarray(embedding, dtype="<f4")
        if vector.shape != (self.embedding_dim,):
            raise ValueError(
                f"a template embedding must have shape ({self.embedding_dim},), not {vector.shape}"
            )
        if not np.isfinite(vector).all():
            raise ValueError("a template embedding has a NaN or infinite value")
        return vector.tobytes()

    def add_templates(
        self,
        subject_id: str,
        new_templates: Sequence[NewTemplate],
        display_name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> WriteResult:
        """Add templates to a subject, creating it if new; a display name or metadata given
        replaces the stored one. One transaction: all templates and their changes, or none."""
        if not subject_id:
            raise ValueError("subject_id must not be empty")
        if not new_templates:
            raise ValueError("enroll needs at least one template")
        blobs = [self._vector_bytes(template.embedding) for template in new_templates]
        metadata_json = None if metadata is None else _dump_metadata(metadata)
        now = _now()
        with self._db.write() as connection:
            exists = connection.execute(
                sa.select(subjects.c.subject_id).where(subjects.c.subject_id == subject_id)
            ).first()
            if exists is None:
                connection.execute(
                    subjects.insert().values(
                        subject_id=subject_id,
                        display_name=display_name,
                        metadata=metadata_json or "{}",
                        created_at=now,
                    )
                )
            else:
                updates = {"display_name": display_name, "metadata": metadata_json}
                updates = {key: value for key, value in updates.items() if value is not None}
                if updates:
                    connection.execute(
                        subjects.update()
                        .where(subjects.c.subject_id == subject_id)
                        .values(**updates)
                    )
            rows = [
                {
                    "subject_id": subject_id,
                    "embedding": blob,
                    "model_id": self.model_id,
                    "quality": template.quality,
                    "image_sha256": template.image_sha256,
                    "created_at": now,
                }
                for blob, template in zip(blobs, new_templates, strict=True)
            ]
            ids = connection.execute(
                templates.insert().returning(templates.c.id, sort_by_parameter_order=True), rows
            ).scalars()
            template_ids = tuple(int(i) for i in ids)
            previous, seq = self._log(connection, ChangeKind.enroll, subject_id, template_ids)
        return WriteResult(template_ids, seq, previous)

    def delete_subject(self, subject_id: str) -> WriteResult:
        """Delete a subject and all its templates. Raises SubjectNotFound."""
        with self._db.write() as connection:
            if not self._subject_exists(connection, subject_id):
                raise SubjectNotFound(subject_id)
            ids = connection.execute(
                sa.select(templates.c.id)
                .where(templates.c.subject_id == subject_id)
                .order_by(templates.c.id)
            ).scalars()
            template_ids = tuple(int(i) for i in ids)
            connection.execute(templates.delete().where(templates.c.subject_id == subject_id))
            connection.execute(subjects.delete().where(subjects.c.subject_id == subject_id))
            # A subject without templates still leaves one change, with no template id.
            logged = template_ids or (None,)
            previous, seq = self._log(connection, ChangeKind.delete_subject, subject_id, logged)
        return WriteResult(template_ids, seq, previous)

    def delete_template(self, subject_id: str, template_id: int) -> WriteResult:
        """Delete one template; the subject stays, even with none left.

        Raises SubjectNotFound, or TemplateNotFound when the subject has no such template."""
        with self._db.write() as connection:
            if not self._subject_exists(connection, subject_id):
                raise SubjectNotFound(subject_id)
            deleted = connection.execute(
                templates.delete().where(
                    templates.c.id == template_id, templates.c.subject_id == subject_id
                )
            ).rowcount
            if not deleted:
                raise TemplateNotFound(subject_id, template_id)
            previous, seq = self._log(
                connection, ChangeKind.delete_template, subject_id, [template_id]
            )
        return WriteResult((template_id,), seq, previous)

    @staticmethod
    def _subject_exists(connection: Connection, subject_id: str) -> bool:
        query = sa.select(subjects.c.subject_id).where(subjects.c.subject_id == subject_id)
        return connection.execute(query).first() is not None

    def get_subject(self, subject_id: str) -> SubjectDetail:
        """A subject and its templates' metadata (not their embeddings). Raises SubjectNotFound."""
        with self._db.read() as connection:
            row = connection.execute(
                sa.select(subjects).where(subjects.c.subject_id == subject_id)
            ).first()
            if row is None:
                raise SubjectNotFound(subject_id)
            records = connection.execute(
                sa.select(*RECORD_COLUMNS)
                .where(templates.c.subject_id == subject_id)
                .order_by(templates.c.id)
            ).all()
        templates_ = tuple(
            TemplateRecord(
                id=int(r.id),
                subject_id=r.subject_id,
                model_id=r.model_id,
                quality=r.quality,
                image_sha256=r.image_sha256,
                created_at=_utc(r.created_at),
            )
            for r in records
        )
        return SubjectDetail(_subject(row, len(templates_)), templates_)

    def display_names(self, subject_ids: Sequence[str]) -> dict[str, str | None]:
        """Display names of the subjects that exist, in one query (identify's candidates)."""
        if not subject_ids:
            return {}
        with self._db.read() as connection:
            rows = connection.execute(
                sa.select(subjects.c.subject_id, subjects.c.display_name).where(
                    subjects.c.subject_id.in_(list(subject_ids))
                )
            ).all()
        return {row.subject_id: row.display_name for row in rows}

    def list_subjects(
        self, limit: int = 50, offset: int = 0, after: str | None = None
    ) -> SubjectPage:
        """One page of subjects ordered by subject_id (code point order on both backends).

        `after` (a subject_id, exclusive) pages by key: unlike `offset` it neither skips nor
        repeats subjects when others are enrolled or deleted between pages."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset not negative")
        template_count = (
            sa.select(sa.func.count())
            .where(templates.c.subject_id == subjects.c.subject_id)
            .scalar_subquery()
        )
        query = sa.select(subjects, template_count.label("template_count"))
        if after is not None:
            query = query.where(subjects.c.subject_id > after)
        query = query.order_by(subjects.c.subject_id).limit(limit).offset(offset)
        with self._db.read() as connection:
            rows = connection.execute(query).all()
            total = connection.execute(sa.select(sa.func.count()).select_from(subjects)).scalar()
        page = tuple(_subject(row, int(row.template_count)) for row in rows)
        return SubjectPage(page, int(total or 0), limit, offset)

    @contextmanager
    def embedding_snapshot(self, chunk_size: int = 10_000) -> Iterator[Snapshot]:
        """Every template with its embedding, as of one consistent point in the change log.

        The rows stream from the database in chunks (a server-side cursor on PostgreSQL), so a
        rebuild holds one chunk beside the index it fills, not a copy of the whole gallery."""
        with self._db.read() as connection:
            seq = connection.execute(sa.select(sa.func.max(changes.c.seq))).scalar() or 0
            result = connection.execution_options(yield_per=chunk_size).execute(
                sa.select(templates.c.id, templates.c.subject_id, templates.c.embedding).order_by(
                    templates.c.subject_id, templates.c.id
                )
            )
            yield Snapshot(seq, (self._chunk(rows) for rows in result.partitions()))

    def _chunk(self, rows: Sequence[sa.Row]) -> EmbeddingChunk:
        vectors = np.frombuffer(b"".join(row.embedding for row in rows), dtype="<f4")
        return EmbeddingChunk(
            ids=np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows)),
            subject_ids=[row.subject_id for row in rows],
            vectors=vectors.reshape(len(rows), self.embedding_dim).astype(np.float32, copy=True),
        )

    def templates_by_ids(self, template_ids: Sequence[int]) -> EmbeddingChunk:
        """The templates among `template_ids` that still exist, with their embeddings."""
        rows: list[sa.Row] = []
        with self._db.read() as connection:
            for start in range(0, len(template_ids), IN_CHUNK):
                batch = [int(i) for i in template_ids[start : start + IN_CHUNK]]
                rows += connection.execute(
                    sa.select(templates.c.id, templates.c.subject_id, templates.c.embedding)
                    .where(templates.c.id.in_(batch))
                    .order_by(templates.c.id)
                ).all()
        return self._chunk(rows)

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Changes with a seq above `seq`, oldest first, at most `limit` of them."""
        with self._db.read() as connection:
            rows = connection.execute(
                sa.select(
                    changes.c.seq, changes.c.kind, changes.c.subject_id, changes.c.template_id
                )
                .where(changes.c.seq > seq)
                .order_by(changes.c.seq)
                .limit(limit)
            ).all()
        return [
            Change(
                seq=int(row.seq),
                kind=ChangeKind(row.kind),
                subject_id=row.subject_id,
                template_id=None if row.template_id is None else int(row.template_id),
            )
            for row in rows
        ]

    def max_seq(self) -> int:
        with self._db.read() as connection:
            return int(connection.execute(sa.select(sa.func.max(changes.c.seq))).scalar() or 0)

    def counts(self) -> Counts:
        """Subjects, templates and the last change seq, all from one snapshot."""
        with self._db.read() as connection:
            subject_count = connection.execute(sa.select(sa.func.count()).select_from(subjects))
            template_count = connection.execute(sa.select(sa.func.count()).select_from(templates))
            seq = connection.execute(sa.select(sa.func.max(changes.c.seq)))
            return Counts(
                subjects=int(subject_count.scalar() or 0),
                templates=int(template_count.scalar() or 0),
                seq=int(seq.scalar() or 0),
            )
