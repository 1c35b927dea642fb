"""Re-measure the hardening probe's figures against a real server (issue 21's findings).

    python bench/probe.py

Starts `facemargin serve` on loopback with API keys on and a scratch gallery, then:
1. an unauthenticated POST declaring 45 MB that sends 1 MB: time to its 401;
2. DELETE of a template id of 2^63 (past SQLite's INTEGER) and 2^63 - 1: the statuses;
3. 200 sockets trickling 3 bytes/s into their headers, and 50 more into a body: how many
   the server has closed after 40 s, while a normal client is served (its latency);
4. 401's WWW-Authenticate, and /docs and /openapi.json without a key.
Prints each figure; the results are recorded in bench/README.md ("Hardening probe").
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
from live_server import start_server

CFP = Path(__file__).resolve().parent.parent.parent / "shared/data/val/cfp/Data/Images"
KEY = "probe-key"


def _raw(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(payload)
    return sock


def unauthenticated_upload(port: int) -> tuple[str, float]:
    sock = _raw(
        port,
        b"POST /identify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 45000000\r\n\r\n",
    )
    start = time.perf_counter()
    sock.sendall(b"x" * 1_000_000)
    answer = sock.recv(200).split(b"\r\n")[0].decode()
    sock.close()
    return answer, time.perf_counter() - start


def trickle(
    port: int, stop: threading.Event, closed: list[float], start: float, head: bytes
) -> None:
    try:
        sock = _raw(port, head)
        while not stop.is_set():
            sock.sendall(b"abc")
            time.sleep(1)
    except OSError:
        closed.append(time.monotonic() - start)


def main() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(
            Path(data_dir),
            {"FACEMARGIN_API_KEYS": f"probe:{digest}", "FACEMARGIN_RATE_LIMIT_PER_MINUTE": "0"},
        )
        port = int(url.rsplit(":", 1)[1])
        auth = {"X-API-Key": KEY}
        try:
            answer, seconds = unauthenticated_upload(port)
            print(
                f"1. unauthenticated 45 MB upload (1 MB sent): '{answer}' after {seconds * 1e3:.1f} ms"
            )

            photo = (CFP / "001/frontal/01.jpg").read_bytes()
            httpx.post(
                f"{url}/enroll",
                headers=auth,
                data={"subject_id": "alice"},
                files={"images": ("a.jpg", photo)},
                timeout=60,
            )
            for template_id in (2**63, 2**63 - 1):
                r = httpx.delete(f"{url}/subjects/alice/templates/{template_id}", headers=auth)
                print(
                    f"2. DELETE template {template_id}: {r.status_code} {r.json()['error']['code']}"
                )

            stop = threading.Event()
            closed: list[float] = []
            start = time.monotonic()
            heads = [b"GET /health HTTP/1.1\r\nX-Slow: "] * 200 + [
                b"POST /verify HTTP/1.1\r\nHost: x\r\nX-API-Key: "
                + KEY.encode()
                + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
                + b'--b\r\nContent-Disposition: form-data; name="image1"; filename="a.jpg"\r\n\r\n'
            ] * 50
            threads = [
                threading.Thread(target=trickle, args=(port, stop, closed, start, h), daemon=True)
                for h in heads
            ]
            for t in threads:
                t.start()
            time.sleep(5)
            latencies = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = httpx.post(
                    f"{url}/verify",
                    headers=auth,
                    timeout=30,
                    files={"image1": ("a.jpg", photo), "image2": ("b.jpg", photo)},
                )
                latencies.append((time.perf_counter() - t0) * 1e3)
                assert r.status_code == 200, r.text
            time.sleep(max(0.0, 40 - (time.monotonic() - start)))
            stop.set()
            print(
                f"3. slow sockets closed by the server within 40 s: {len(closed)} of {len(heads)} "
                f"(first after {min(closed, default=float('nan')):.1f} s, last after "
                f"{max(closed, default=float('nan')):.1f} s); /verify meanwhile "
                f"{min(latencies):.0f}-{max(latencies):.0f} ms"
            )

            r = httpx.get(f"{url}/subjects")
            print(
                f"4. 401 WWW-Authenticate: {r.headers.get('www-authenticate')!r}; "
                f"/docs without a key: {httpx.get(url + '/docs').status_code}; "
                f"/openapi.json: {httpx.get(url + '/openapi.json').status_code}"
            )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
