"""The gallery's tables as SQLAlchemy Core sees them. They mirror migrations/versions: the
revisions create the tables, these describe them to the store's queries."""

from __future__ import annotations

import sqlalchemy as sa

SUBJECT_ID = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

tables = sa.MetaData()
gallery_meta = sa.Table(
    "gallery_meta",
    tables,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("embedding_dim", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
subjects = sa.Table(
    "subjects",
    tables,
    sa.Column("subject_id", SUBJECT_ID, primary_key=True),
    sa.Column("display_name", sa.Text),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
templates = sa.Table(
    "templates",
    tables,
    sa.Column("id", ROW_ID, sa.Identity(), primary_key=True),
    sa.Column("subject_id", SUBJECT_ID, sa.ForeignKey("subjects.subject_id"), nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("model_id", sa.Text, nullable=False),
    sa.Column("quality", sa.Float),
    sa.Column("image_sha256", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)
RECORD_COLUMNS = [
    templates.c[name]
    for name in ("id", "subject_id", "model_id", "quality", "image_sha256", "created_at")
]
changes = sa.Table(
    "changes",
    tables,
    sa.Column("seq", ROW_ID, sa.Identity(), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("subject_id", SUBJECT_ID, nullable=False),
    sa.Column("template_id", sa.BigInteger),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)
