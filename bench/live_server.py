"""A real `facemargin serve` on a free loopback port for the benchmark scripts, with a
scratch gallery; and the server's resident memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    cpus: set[int] | None = None,
    args: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start the server and wait until /ready answers; (process, base URL). `cpus` pins it
    (and its threads) to those cores, so a load generator on the others cannot slow it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *(args or []),
        ],
        cwd=ROOT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        env=os.environ | {"FACEMARGIN_DATA_DIR": str(data_dir)} | (env or {}),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("server did not become ready in 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
