"""Initial gallery schema: model binding, subjects, templates and the change log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# PostgreSQL's default collation depends on the server's locale; "C" orders subject ids by code
# point, as SQLite does, so pages come out in the same order on both and the primary key index
# serves the ORDER BY.
SUBJECT_ID = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
# SQLite only autoincrements (never reusing an id) an INTEGER PRIMARY KEY declared AUTOINCREMENT.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gallery_meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("embedding_dim", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_gallery_meta_single_row"),
    )
    op.create_table(
        "subjects",
        sa.Column("subject_id", SUBJECT_ID, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=True),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "templates",
        sa.Column("id", ROW_ID, sa.Identity(), primary_key=True),
        sa.Column(
            "subject_id",
            SUBJECT_ID,
            sa.ForeignKey("subjects.subject_id", name="fk_templates_subject"),
            nullable=False,
        ),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("quality", sa.Float, nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    # Loads stream templates grouped by subject, and deletes find a subject's templates.
    op.create_index("ix_templates_subject", "templates", ["subject_id", "id"])
    op.create_table(
        "changes",
        sa.Column("seq", ROW_ID, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("subject_id", SUBJECT_ID, nullable=False),
        sa.Column("template_id", sa.BigInteger, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('enroll', 'delete_subject', 'delete_template')", name="ck_changes_kind"
        ),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("changes")
    op.drop_index("ix_templates_subject", table_name="templates")
    op.drop_table("templates")
    op.drop_table("subjects")
    op.drop_table("gallery_meta")
