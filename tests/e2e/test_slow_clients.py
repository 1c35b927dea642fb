"""Slow clients (slowloris-style uploads trickling a byte at a time) must not starve normal
requests: the server keeps answering real verifications promptly while they hang on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from tests.e2e.test_api import CFP, photo

pytestmark = pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}")

SLOW_CLIENTS = 300


def open_slow_upload(port: int) -> socket.socket:
    """A POST /verify that declares a 1 MB multipart body and then sends almost none of it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /verify HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="image1"; filename="a.jpg"\r\n\r\n'
    )
    return sock


def verify(url: str) -> tuple[int, float]:
    start = time.perf_counter()
    response = httpx.post(
        url + "/verify",
        files={
            "image1": ("a.jpg", photo(1, 1).read_bytes()),
            "image2": ("b.jpg", photo(1, 2).read_bytes()),
        },
        timeout=30,
    )
    return response.status_code, time.perf_counter() - start


def test_trickling_uploads_do_not_starve_normal_requests(server):
    _, baseline = verify(server.url)  # warm
    _, baseline = verify(server.url)
    sockets = [open_slow_upload(server.port) for _ in range(SLOW_CLIENTS)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"\0")

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        time.sleep(1.0)
        results = [verify(server.url) for _ in range(5)]
        health = httpx.get(server.url + "/health", timeout=10)
    finally:
        stop.set()
        dripper.join(timeout=5)
        alive = 0
        for sock in sockets:
            try:
                sock.send(b"\0")
                alive += 1
            except OSError:
                pass
            sock.close()
    assert health.status_code == 200
    assert [status for status, _ in results] == [200] * 5
    slowest = max(seconds for _, seconds in results)
    # Normal requests may slow down a little with 300 idle connections open, never stall.
    assert slowest < max(2.0, 5 * baseline), (baseline, [s for _, s in results])
    print(
        f"{alive}/{SLOW_CLIENTS} slow uploads still open; verify {baseline:.3f} s alone, "
        f"slowest {slowest:.3f} s beside them"
    )
