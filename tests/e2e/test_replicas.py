"""Two API replicas on one PostgreSQL store: a write through one is honoured by the other
within the sync interval."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.conftest import gallery_env, running
from tests.e2e.test_api import CFP, enroll, identify, photo, reencoded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}"),
]
SYNC_S = 0.5


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the test server; returns its URL."""
    base = sa.make_url(url)
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def eventually(check, within: float) -> float:
    """Seconds until `check()` held; fails after `within`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"not true within {within} s")
        time.sleep(0.05)
    return time.monotonic() - start


def candidates(url: str, data: bytes) -> list[str]:
    response = identify(url, data, top_k="10")
    assert response.status_code == 200, response.text
    return [c["subject_id"] for c in response.json()["faces"][0]["candidates"]]


def test_writes_reach_the_other_replica(postgres_url, tmp_path):
    url = fresh_database(postgres_url, "facemargin_replicas")
    env = gallery_env(tmp_path) | {
        "FACEMARGIN_DATABASE_URL": url,
        "FACEMARGIN_SYNC_INTERVAL_S": str(SYNC_S),
    }
    with running(env) as a, running(env) as b:
        probe = reencoded(photo(60, 1))
        assert enroll(a.url, "replicated", [photo(60, 1)]).status_code == 200
        seen_after = eventually(
            lambda: "replicated" in candidates(b.url, probe), within=10 * SYNC_S
        )
        assert httpx.get(f"{b.url}/subjects/replicated").status_code == 200

        assert enroll(b.url, "from-b", [photo(61, 1)]).status_code == 200
        eventually(
            lambda: "from-b" in candidates(a.url, reencoded(photo(61, 1))), within=10 * SYNC_S
        )

        assert httpx.delete(f"{a.url}/subjects/replicated").status_code == 200
        assert "replicated" not in candidates(a.url, probe)  # at once on the deleting replica
        gone_after = eventually(
            lambda: "replicated" not in candidates(b.url, probe), within=10 * SYNC_S
        )
        for server in (a, b):
            assert httpx.get(f"{server.url}/ready").json()["ready"] is True
    print(
        f"enrolment visible on the other replica after {seen_after:.2f} s, deletion after {gone_after:.2f} s"
    )


def test_a_replica_waits_for_its_database(postgres_url, tmp_path):
    """Started before its database exists (a store still booting), the server answers /health,
    keeps /ready at 503, and opens the gallery by itself once the database is there."""
    base = sa.make_url(postgres_url)
    admin = sa.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text("DROP DATABASE IF EXISTS facemargin_late"))
    url = base.set(database="facemargin_late").render_as_string(hide_password=False)
    env = gallery_env(tmp_path) | {"FACEMARGIN_DATABASE_URL": url}
    with running(env, wait_for="/health") as server:
        waiting = httpx.get(f"{server.url}/ready")
        assert waiting.status_code == 503
        assert "unreachable" in waiting.json()["checks"]["gallery"]["detail"]
        refused = httpx.get(f"{server.url}/subjects")
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "not_ready")
        with admin.connect() as connection:
            connection.execute(sa.text("CREATE DATABASE facemargin_late"))
        eventually(lambda: httpx.get(f"{server.url}/ready").status_code == 200, within=15)
        assert enroll(server.url, "late", [photo(62, 1)]).status_code == 200
    admin.dispose()
