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


def _closed_within(sock: socket.socket, seconds: float, drip: bytes) -> tuple[bool, bytes]:
    """Drip a byte every 0.3 s until the server closes the socket or `seconds` pass; returns
    (closed, what the server sent)."""
    sock.settimeout(0.3)
    reply, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                return True, reply
            reply += chunk
        except TimeoutError:
            pass
        except OSError:
            return True, reply
        try:
            sock.send(drip)
        except OSError:
            return True, reply
    return False, reply


def test_slow_headers_and_slow_bodies_are_cut_off_while_a_normal_client_is_served(tmp_path):
    from tests.e2e.conftest import gallery_env, running

    env = gallery_env(tmp_path) | {
        "FACEMARGIN_HEADER_TIMEOUT_S": "2",
        "FACEMARGIN_BODY_GRACE_S": "2",
        "FACEMARGIN_MIN_BODY_BYTES_PER_S": "100000",
    }
    with running(env) as server:
        slow_headers = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow_headers.sendall(b"POST /verify HTTP/1.1\r\nHo")
        slow_body = open_slow_upload(server.port)  # 1 MB announced: 2 s + 10 s allowed
        start = time.monotonic()
        assert verify(server.url)[0] == 200  # a normal client meanwhile
        closed, _ = _closed_within(slow_headers, 8, b"x")
        assert closed and time.monotonic() - start < 8
        closed, reply = _closed_within(slow_body, 25, b"\0")
        assert closed and reply.startswith(b"HTTP/1.1 408"), reply[:300]
        assert b"request_timeout" in reply
        slow_headers.close()
        slow_body.close()
        assert verify(server.url)[0] == 200
