"""The store and gallery behaviour tests again, on a real PostgreSQL server (the
`postgres_url` fixture in tests/conftest.py). The tests drop and recreate the gallery tables in
that database, so point FACEMARGIN_TEST_DATABASE_URL at a scratch database only."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.service.test_gallery import GalleryBehaviour
from tests.service.test_store import StoreBehaviour

GALLERY_TABLES = "changes, templates, subjects, gallery_meta, alembic_version"


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """The server's test database, emptied of any gallery a previous test left."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {GALLERY_TABLES} CASCADE")
    engine.dispose()
    return postgres_url


class TestStorePostgres(StoreBehaviour):
    pass


class TestGalleryPostgres(GalleryBehaviour):
    pass
