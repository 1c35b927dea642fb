"""The path around the models: in-process pipeline against HTTP, same photos, one run.

    python bench/overhead.py                       # 80 CFP photos, server pinned to core 0
    python bench/overhead.py --photos 80 --seconds 20 --clients 4

Three figures, measured side by side:
1. **in-process**: decode -> detect -> align -> embed through the very functions the service
   calls (`read_faces`, `Embedder.embed`), one thread pinned to core 0: ms per photo and
   photos/s on one core.
2. **sequential /embed**: one client on a keep-alive connection, one photo per request,
   against a fresh `facemargin serve` pinned to core 0: median latency, and its excess over
   the in-process time of the same photos.
3. **saturated /embed** (or --route verify / identify, against a gallery of --gallery
   subjects): N clients (closed loop, raw keep-alive sockets on core 1, so the
   client costs little and never shares the server's core): photos/s, and the ratio of the
   in-process rate to it (1.0 = no overhead at all).
4. with --peer: face_recognition's whole pipeline (HOG detection, dlib encoding; see
   peer.py for its install) on the same photos on core 0, and our HTTP rate against it.
The client's own CPU time is printed, so the share of the machine it used is known. The
server runs with its defaults except what --env adds. Results to JSON beside the script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from live_server import start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
CFP = ROOT.parent / "shared/data/val/cfp/Data/Images"


def photos(n: int) -> list[bytes]:
    paths = sorted(CFP.glob("*/frontal/01.jpg"))[:n]
    return [p.read_bytes() for p in paths]


def in_process(data: list[bytes], rounds: int) -> float:
    """Median over rounds of ms per photo, one thread."""
    from service.api.settings import Settings
    from service.vision.detection import FacePolicy
    from service.vision.embedder import Embedder, choose_providers
    from service.vision.faces import read_faces, stack
    from service.vision.preprocess import build_detector

    s = Settings()
    detector = build_detector(s.detector_config())
    embedder = Embedder(
        s.model_path, threads=1, providers=choose_providers("cpu"), batch_size=s.batch_max_size
    )

    def one(photo: bytes) -> None:
        found = read_faces(photo, detector, embedder.template, FacePolicy.largest, s.photo_limits())
        embedder.embed(stack(found.faces, embedder.template))

    for photo in data[:10]:
        one(photo)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for photo in data:
            one(photo)
        times.append((time.perf_counter() - start) / len(data) * 1e3)
    return statistics.median(times)


def peer_ms(data: list[bytes]) -> float:
    """face_recognition's ms per photo, one thread, largest face encoded."""
    import io

    import face_recognition

    start = time.perf_counter()
    for photo in data:
        image = face_recognition.load_image_file(io.BytesIO(photo))
        boxes = face_recognition.face_locations(image)
        if boxes:
            largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
            face_recognition.face_encodings(image, [largest])
    return (time.perf_counter() - start) / len(data) * 1e3


ROUTES = {"embed": ("image",), "verify": ("image1", "image2"), "identify": ("image",)}


def multipart(route: str, photos: list[bytes], port: int) -> bytes:
    """One raw HTTP/1.1 request to `route` carrying `photos` in the route's file fields."""
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + photo
            + b"\r\n"
            for field, photo in zip(ROUTES[route], photos, strict=True)
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /{route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def enrol_gallery(url: str, n: int) -> None:
    """A gallery for /identify: n CFP people, each from a photo the probes do not use."""
    import httpx

    for person in sorted(CFP.glob("*/frontal/02.jpg"))[:n]:
        files = {"images": ("a.jpg", person.read_bytes())}
        httpx.post(f"{url}/enroll", data={"subject_id": person.parts[-3]}, files=files, timeout=60)


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one HTTP/1.1 response with Content-Length from `sock`; its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in lines[1:])
        if k.lower() == b"content-length"
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        rest += chunk
    buffer[:] = rest[length:]
    return status


def sequential(port: int, requests: list[bytes], rounds: int) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    latencies = []
    for r in range(rounds + 1):
        for request in requests:
            start = time.perf_counter()
            sock.sendall(request)
            status = read_response(sock, buffer)
            if r:  # the first round warms up
                latencies.append((time.perf_counter() - start) * 1e3)
            assert status == 200, status
    sock.close()
    return latencies


def saturate(port: int, requests: list[bytes], clients: int, seconds: float) -> int:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        i = k
        while time.monotonic() < stop:
            sock.sendall(requests[i % len(requests)])
            if read_response(sock, buffer) == 200:
                done[k] += 1
            i += clients
        sock.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the server")
    parser.add_argument("--peer", action="store_true", help="also time face_recognition")
    parser.add_argument("--route", choices=sorted(ROUTES), default="embed")
    parser.add_argument(
        "--server-cpus",
        default="0",
        help="cores for the server, e.g. 0,1 (the in-process figure and the client stay on 0 and 1)",
    )
    parser.add_argument("--workers", type=int, default=1, help="facemargin serve --workers")
    parser.add_argument("--gallery", type=int, default=100, help="subjects enrolled (identify)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/overhead-ROUTE.json"
    )
    args = parser.parse_args()
    data = photos(args.photos)
    server_cpus, client_cpus = {int(c) for c in args.server_cpus.split(",")}, {1}

    # The in-process figure on the server's core, with one ONNX thread like a pinned server.
    os.sched_setaffinity(0, {0})
    pipeline_ms = in_process(data, args.rounds)
    peer = peer_ms(data) if args.peer else None
    os.sched_setaffinity(0, client_cpus)
    print(f"in-process pipeline (core 0, one thread): {pipeline_ms:.2f} ms/photo, "
          f"{1e3 / pipeline_ms:.1f} photos/s")  # fmt: skip

    env = {"OMP_NUM_THREADS": "1", "FACEMARGIN_ONNX_THREADS": "1"}
    env |= dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(
            Path(data_dir), env, cpus=server_cpus, args=["--workers", str(args.workers)]
        )
        port = int(url.rsplit(":", 1)[1])
        try:
            per = len(ROUTES[args.route])  # photos per request
            requests = [
                multipart(args.route, [data[(i + k) % len(data)] for k in range(per)], port)
                for i in range(len(data))
            ]
            if args.route == "identify":
                enrol_gallery(url, args.gallery)
            latencies = sequential(port, requests, args.rounds)
            median = statistics.median(latencies)
            print(f"sequential /{args.route} (one keep-alive client, {per} photo(s) each): "
                  f"median {median:.2f} ms, excess over in-process "
                  f"{median - per * pipeline_ms:+.2f} ms")  # fmt: skip
            saturate(port, requests, args.clients, 3)  # warm the batcher and the pool
            before = cpu_s()
            n = saturate(port, requests, args.clients, args.seconds)
            client_cpu = cpu_s() - before
            rate = n * per / args.seconds
            cores = len(server_cpus)
            print(f"saturated /{args.route} ({args.clients} clients, {args.workers} worker(s)): "
                  f"{rate:.1f} photos/s on {cores} core(s); in-process x cores / HTTP = "
                  f"{1e3 / pipeline_ms * cores / rate:.2f}x; the client used "
                  f"{client_cpu / args.seconds * 100:.0f}% of core 1")  # fmt: skip
            if peer is not None:
                print(f"face_recognition (core 0, one thread): {peer:.1f} ms/photo, "
                      f"{1e3 / peer:.1f} photos/s; facemargin over HTTP / it = "
                      f"{rate / cores * peer / 1e3:.2f}x per core")  # fmt: skip
        finally:
            process.terminate()
            process.wait(timeout=30)
    result = {
        "peer_ms": peer,
        "http_over_peer": rate / len(server_cpus) * peer / 1e3 if peer else None,
        "route": args.route,
        "photos": len(data),
        "server_env": env,
        "server_cpus": sorted(server_cpus),
        "workers": args.workers,
        "in_process_ms": pipeline_ms,
        "in_process_per_s": 1e3 / pipeline_ms,
        "sequential_median_ms": median,
        "sequential_p90_ms": statistics.quantiles(latencies, n=10)[-1],
        "sequential_excess_ms": median - per * pipeline_ms,
        "saturated_per_s": rate,
        "overhead_ratio": 1e3 / pipeline_ms * len(server_cpus) / rate,
        "client_core_share": client_cpu / args.seconds,
    }
    out = args.out or RESULTS / f"overhead-{args.route}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
