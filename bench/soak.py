"""Soak: a real server under an hour (by default) of mixed traffic; does its memory grow?

    python bench/soak.py --minutes 60 --clients 4

Starts `facemargin serve` on loopback with a scratch gallery and drives it with a mix of
verify, enroll, identify, list, delete and bad uploads from real CFP photos, from several
client threads. Samples the server's resident memory every few seconds and reports the
growth between the end of warm-up (the first 10% of the run) and the end, as MB and MB per
hour, with requests per second and the status codes seen. Writes a PNG of memory and
throughput over time next to the JSON results. Not run in CI: `--minutes 1` is a smoke run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from live_server import rss_mb, start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
CFP = ROOT.parent / "shared/data/val/cfp/Data/Images"


def traffic(url: str, stop: threading.Event, codes: Counter, seed: int) -> None:
    rng = random.Random(seed)
    client = httpx.Client(base_url=url, timeout=60)
    enrolled: list[str] = []

    def face(person: int | None = None, k: int | None = None) -> bytes:
        person = person or rng.randint(1, 500)
        k = k or rng.randint(1, 10)
        return (CFP / f"{person:03d}" / "frontal" / f"{k:02d}.jpg").read_bytes()

    while not stop.is_set():
        # Enrolments and deletes balance, so the gallery holds steady and any growth left is
        # the server's, not the data's.
        action = rng.choices(
            ["verify", "identify", "enroll", "list", "delete", "bad"], [30, 30, 12, 10, 12, 6]
        )[0]
        if action == "enroll" and len(enrolled) >= 50:
            action = "delete"
        if action == "delete" and not enrolled:
            action = "bad"
        if action == "verify":
            files = {"image1": ("a.jpg", face()), "image2": ("b.jpg", face())}
            response = client.post("/verify", files=files)
        elif action == "identify":
            response = client.post("/identify", files={"image": ("a.jpg", face())})
        elif action == "enroll":
            subject = f"s{seed}-{rng.randrange(10**9)}"
            response = client.post(
                "/enroll", data={"subject_id": subject}, files={"images": ("a.jpg", face())}
            )
            if response.status_code == 200:
                enrolled.append(subject)
        elif action == "list":
            response = client.get("/subjects", params={"limit": 50})
        elif action == "delete":
            response = client.delete(f"/subjects/{enrolled.pop(rng.randrange(len(enrolled)))}")
        else:
            data = face()
            response = client.post("/identify", files={"image": ("x.jpg", data[: len(data) // 3])})
        codes[f"{action} {response.status_code}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(Path(data_dir), {"OMP_NUM_THREADS": "1"})
        stop = threading.Event()
        codes: Counter = Counter()
        workers = [
            threading.Thread(target=traffic, args=(url, stop, codes, seed), daemon=True)
            for seed in range(args.clients)
        ]
        for worker in workers:
            worker.start()
        samples: list[tuple[float, float, int]] = []
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < args.minutes * 60:
                samples.append((elapsed, rss_mb(process.pid), sum(codes.values())))
                print(
                    f"\r{elapsed / 60:6.1f} min  rss {samples[-1][1]:7.1f} MB  "
                    f"{samples[-1][2]} requests",
                    end="",
                    flush=True,
                )
                time.sleep(args.sample_s)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
            process.terminate()
            process.wait(timeout=30)
    print()
    warm = next(s for s in samples if s[0] >= 0.1 * samples[-1][0])
    end = samples[-1]
    hours = max(end[0] - warm[0], 1e-9) / 3600
    result = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": end[2],
        "requests_per_s": end[2] / max(end[0], 1e-9),
        "rss_after_warmup_mb": warm[1],
        "rss_end_mb": end[1],
        "rss_peak_mb": max(s[1] for s in samples),
        "growth_mb": end[1] - warm[1],
        "growth_mb_per_hour": (end[1] - warm[1]) / hours,
        "server_errors": sum(n for k, n in codes.items() if k.split()[1].startswith("5")),
        "codes": dict(sorted(codes.items())),
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(samples, args.out.with_suffix(".png"))


def plot(samples: list[tuple[float, float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s[0] / 60 for s in samples]
    figure, (memory, rate) = plt.subplots(1, 2, figsize=(12, 4))
    memory.plot(minutes, [s[1] for s in samples])
    memory.set(xlabel="minutes", ylabel="server RSS (MB)", title="memory under mixed traffic")
    rates = [(b[2] - a[2]) / max(b[0] - a[0], 1e-9) for a, b in itertools.pairwise(samples)]
    rate.plot(minutes[1:], rates)
    rate.set(xlabel="minutes", ylabel="requests/s", title="throughput")
    for axis in (memory, rate):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
