"""A real `facemargin serve` process on a loopback port, with its own gallery folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        env: dict[str, str],
        port: int | None = None,
        log_level: str = "warning",
        output: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_level = log_level
        self.output = output  # stdout and stderr go here when set
        self.process: subprocess.Popen | None = None

    def start(self, wait_for: str = "/ready", timeout: float = 90) -> Server:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                self.log_level,
            ],
            cwd=REPO,
            env=os.environ | {"OMP_NUM_THREADS": "1"} | self.env,
            stdout=self.output.open("ab") if self.output else None,
            stderr=subprocess.STDOUT if self.output else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + wait_for, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server did not answer {wait_for} in {timeout:.0f} s")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing; what the store acknowledged must survive."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(env: dict[str, str], wait_for: str = "/ready") -> Iterator[Server]:
    server = Server(env).start(wait_for)
    try:
        yield server
    finally:
        server.stop()


def gallery_env(data_dir: Path, **extra: str) -> dict[str, str]:
    # Shedding on queue delay depends on the machine's speed; tests not about shedding must
    # not meet a timing-dependent 503 on a slow CI machine.
    return {
        "FACEMARGIN_DATA_DIR": str(data_dir),
        "FACEMARGIN_SYNC_INTERVAL_S": "0.2",
        "FACEMARGIN_MAX_QUEUE_DELAY_MS": "60000",
    } | extra


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server with a scratch gallery per test module; modules needing other settings
    define their own."""
    with running(gallery_env(tmp_path_factory.mktemp("data"))) as process:
        yield process
