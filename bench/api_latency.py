"""Latency of /verify and /identify through a real server on loopback, one request at a time.

    python bench/api_latency.py [--requests 40] [--gallery 200]

Starts `facemargin serve` on a free port with a scratch gallery, enrolls `--gallery` CFP
people, then times sequential requests with photos at their own size (CFP, about 250 px)
and upscaled to 1280x960 (a phone photo after the client's resize). Prints p50/p95 and the
server's own per-stage medians from /metrics.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from live_server import start_server
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CFP = REPO.parent / "shared" / "data" / "val" / "cfp" / "Data" / "Images"


def photo(person: int, k: int = 1) -> Path:
    return CFP / f"{person:03d}" / "frontal" / f"{k:02d}.jpg"


def resized(path: Path, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {1e3 * statistics.median(ordered):7.1f} ms   p95 {1e3 * p95:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--gallery", type=int, default=200)
    args = parser.parse_args()
    server, url = start_server(Path(tempfile.mkdtemp(prefix="facemargin-bench-")))
    try:
        for person in range(1, args.gallery + 1):
            files = [("images", ("a.jpg", photo(person, 1).read_bytes(), "image/jpeg"))]
            httpx.post(f"{url}/enroll", data={"subject_id": f"p{person}"}, files=files, timeout=60)
        print(f"gallery: {args.gallery} subjects; {args.requests} sequential requests each")
        for label, size in (("CFP photo as is", None), ("1280x960 photo", (1280, 960))):
            a = photo(1, 2).read_bytes() if size is None else resized(photo(1, 2), size)
            b = photo(1, 3).read_bytes() if size is None else resized(photo(1, 3), size)
            for endpoint in ("verify", "identify"):
                times = []
                for _ in range(args.requests):
                    if endpoint == "verify":
                        files = {"image1": ("a.jpg", a), "image2": ("b.jpg", b)}
                    else:
                        files = {"image": ("a.jpg", a)}
                    start = time.perf_counter()
                    response = httpx.post(f"{url}/{endpoint}", files=files, timeout=60)
                    times.append(time.perf_counter() - start)
                    response.raise_for_status()
                print(f"/{endpoint:<9} {label:<16} {percentiles(times)}")
        metrics = httpx.get(f"{url}/metrics").text
        print("server stages (mean over all requests):")
        sums, counts = {}, {}
        for line in metrics.splitlines():
            if line.startswith("facemargin_stage_seconds_sum"):
                sums[line.split('"')[1]] = float(line.split()[-1])
            if line.startswith("facemargin_stage_seconds_count"):
                counts[line.split('"')[1]] = float(line.split()[-1])
        for stage, total in sums.items():
            if counts.get(stage):
                print(f"  {stage:<8} {1e3 * total / counts[stage]:7.2f} ms")
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
