"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temporary folder, listening
only on a Unix socket there. Used by the `postgres_url` fixture, and by `.ci/run`:

    python -m tests.postgres_server start DIR   # prints the URL of database facemargin_test
    python -m tests.postgres_server stop DIR

PostgreSQL refuses to run as root: under root the server runs as the `postgres` user
(`nobody` if there is none) through runuser (or su).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

DATABASE = "facemargin_test"


class ServerUnavailable(RuntimeError):
    pass


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    folders = [Path(found).parent for found in [shutil.which("initdb")] if found]
    folders += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, or an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerUnavailable("running as root and there is no postgres or nobody account")


def as_user(user: pwd.struct_passwd | None, command: list[str]) -> list[str]:
    if user is None:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *command]
    return ["su", "-s", "/bin/sh", user.pw_name, "-c", shlex.join(command)]


def free_port() -> int:
    # The server listens on no TCP port, but the port number names its socket file.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], root: Path) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True)
    except subprocess.CalledProcessError as error:
        log = root / "server.log"
        detail = log.read_text() if log.is_file() else ""
        raise ServerUnavailable(
            f"{error.cmd} failed: {error.stderr.decode(errors='replace')}{detail}"
        ) from error


def start(root: Path) -> str:
    """Start a server in `root` (created; must not hold one already); returns the URL of its
    empty test database."""
    import sqlalchemy as sa

    binaries = server_binaries()
    if binaries is None:
        raise ServerUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
            "/usr/lib/postgresql/*/bin; install the postgresql package"
        )
    user = server_user()
    root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    options = (
        f"-k {root} -p {port} -c listen_addresses='' "
        # A test server: speed over crash safety.
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    _run(as_user(user, [*initdb, "-E", "UTF8", "--locale=C", "--no-sync"]), root)
    # -l: the server's output goes to a file, so it does not hold our pipes open.
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log")]
    _run(as_user(user, [*pg_ctl, "-o", options, "-w", "start"]), root)
    admin = sa.create_engine(
        f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    admin.dispose()
    return f"postgresql+psycopg://postgres@/{DATABASE}?host={root}&port={port}"


def stop(root: Path) -> None:
    binaries = server_binaries()
    if binaries is not None and (root / "data").is_dir():
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "stop"]
        _run(as_user(server_user(), pg_ctl), root)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    action, folder = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(folder))
    elif action == "stop":
        stop(folder)
    else:
        sys.exit(f"usage: python -m tests.postgres_server start|stop DIR (not {action!r})")
