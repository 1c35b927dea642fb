"""The gallery's database connection: the engine for SQLite or PostgreSQL, the single-writer
transaction, snapshot reads and the schema migrations. What the rows mean is the Store's
(service/gallery/store.py); how they are reached safely is this module's.

Writers are serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction-scoped advisory
lock), which makes `changes.seq` grow in commit order. SQLite runs in WAL mode with
synchronous=FULL: a write acknowledged to the caller is on disk and survives kill -9 or power
loss, and readers never block the writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long an SQLite writer waits for another one before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_PAGE_SIZE = 8192
# Any constant: the PostgreSQL advisory lock that serialises gallery writers (per database).
PG_WRITE_LOCK = 0x66_6D_67_61_6C  # "fmgal"


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
        raise ValueError("an in-memory SQLite gallery would vanish with its connection; use a file")
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own implicit BEGIN is off: `begin` below chooses the kind of transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Only takes effect on a new file, before its first write. A 512-d template row is
        # over 2 KiB, so only one fits a default 4 KiB page: 8 KiB pages hold three.
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction upgrading from read
        # to write can fail with "database is locked" without waiting out busy_timeout.
        mode = connection.get_execution_options().get("facemargin_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """One gallery database's engine. Thread-safe: each transaction has its own connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(facemargin_begin="IMMEDIATE")
        self._postgres = engine.dialect.name == "postgresql"

    @classmethod
    def connect(cls, database_url: str) -> Database:
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            return cls(_sqlite_engine(url))
        if url.get_backend_name() == "postgresql":
            return cls(sa.create_engine(url, pool_pre_ping=True))
        raise ValueError(f"unsupported gallery database {url.get_backend_name()!r}")

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the gallery's single write lock until it commits."""
        with self._writer.begin() as connection:
            if self._postgres:
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_WRITE_LOCK)))
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction on one snapshot (SQLite's readers always have one)."""
        options = {"isolation_level": "REPEATABLE READ"} if self._postgres else {}
        with self.engine.connect().execution_options(**options) as connection, connection.begin():
            yield connection

    def migrate(self) -> None:
        """The schema to Alembic's head, under the write lock, so replicas starting together
        do not create the tables twice."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.write() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
