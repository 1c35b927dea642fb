"""Open-loop load against a real server: latency and throughput versus offered load, up to
and past saturation, with micro-batching on and off.

    python bench/load.py --route verify --rates 2 4 8 16 32 64 --seconds 20

For each configuration ("batching on": the defaults; "batching off": FACEMARGIN_BATCH_MAX_SIZE=1)
this script starts `facemargin serve` on loopback (one worker, the service's default threads)
and, from this separate process, sends requests on a Poisson schedule at each offered rate
whether or not earlier ones have returned (open loop: a slow server cannot slow the
arrivals, as it would with a fixed pool of clients). It records every response's status and
latency, then reports per rate: goodput (2xx per second), p50/p95/p99 latency of the 2xx,
the share shed (503 overloaded or 429) and how fast those refusals came back. A healthy
server keeps 2xx latency bounded past saturation by shedding quickly. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from live_server import start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
CFP = ROOT.parent / "shared/data/val/cfp/Data/Images"


def photos(n: int = 40) -> list[bytes]:
    return [(CFP / f"{p:03d}" / "frontal" / "01.jpg").read_bytes() for p in range(1, n + 1)]


async def offered_load(
    url: str, route: str, rate: float, seconds: float, images: list[bytes], seed: int
) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    results: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            a, b = images[i % len(images)], images[(i * 7 + 3) % len(images)]
            files = (
                {"image1": ("a.jpg", a), "image2": ("b.jpg", b)}
                if route == "verify"
                else {"image": ("a.jpg", a)}
            )
            start = time.perf_counter()
            try:
                response = await client.post(f"/{route}", files=files)
                status = response.status_code
            except httpx.TransportError:
                status = 0
            results.append((status, time.perf_counter() - start))

        tasks = []
        start = time.perf_counter()
        next_at = 0.0
        i = 0
        while next_at < seconds:
            delay = start + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    return results


def summarise(rate: float, seconds: float, results: list[tuple[int, float]]) -> dict:
    ok = np.array([t for s, t in results if 200 <= s < 300])
    shed = np.array([t for s, t in results if s in (429, 503)])
    other = [s for s, _ in results if not (200 <= s < 300 or s in (429, 503))]

    def pct(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q) * 1000) if values.size else None

    return {
        "offered_per_s": rate,
        "sent": len(results),
        "goodput_per_s": ok.size / seconds,
        "p50_ms": pct(ok, 50),
        "p95_ms": pct(ok, 95),
        "p99_ms": pct(ok, 99),
        "shed_fraction": shed.size / max(len(results), 1),
        "shed_p99_ms": pct(shed, 99),
        "other_statuses": sorted(set(other)),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, goodput) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rows in report["configs"].items():
        rates = [r["offered_per_s"] for r in rows]
        for q, style in (("p50_ms", "-"), ("p99_ms", "--")):
            latency.plot(rates, [r[q] for r in rows], style, marker="o", label=f"{name} {q[:3]}")
        goodput.plot(rates, [r["goodput_per_s"] for r in rows], marker="o", label=name)
    latency.set(xscale="log", yscale="log", xlabel="offered requests/s", ylabel="2xx latency (ms)")
    goodput.plot(rates, rates, ":", color="grey", label="offered")
    goodput.set(xscale="log", xlabel="offered requests/s", ylabel="2xx per second")
    for axis in (latency, goodput):
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    figure.suptitle(f"/{report['route']} under open-loop load")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", choices=["verify", "identify"], default="verify")
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["batching on", "batching off"],
        choices=["batching on", "batching off", "bf16", "mtcnn+mobilefacenet"],
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="server setting, all configs",
    )
    parser.add_argument(
        "--server-cpus",
        type=int,
        nargs="+",
        help="pin the server to these cores and this load generator to the rest, so overload "
        "measures the server and not a generator starved of CPU",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "load")
    args = parser.parse_args()
    server_cpus = set(args.server_cpus or [])
    if server_cpus:
        rest = os.sched_getaffinity(0) - server_cpus
        if not rest:
            parser.error("--server-cpus must leave a core for the load generator")
        os.sched_setaffinity(0, rest)
    common = dict(item.split("=", 1) for item in args.env)

    envs = {
        "batching on": {},
        "batching off": {"FACEMARGIN_BATCH_MAX_SIZE": "1"},
        # The default embedder's bf16 variant, run by OpenVINO (CPUs with native bfloat16).
        "bf16": {
            "FACEMARGIN_MODEL_PATH": str(
                ROOT / "models" / "face-reidentification-retail-0095-bf16.onnx"
            )
        },
        # The defaults before issue 16, to measure the new ones against on the same machine.
        "mtcnn+mobilefacenet": {
            "FACEMARGIN_DETECTOR": "mtcnn",
            "FACEMARGIN_MODEL_PATH": str(ROOT / "models" / "embedder.onnx"),
        },
    }
    images = photos()
    report: dict = {
        "route": args.route,
        "seconds": args.seconds,
        "env": common,
        "server_cpus": sorted(server_cpus) or None,
        "configs": {},
    }
    for name in args.configs:
        with tempfile.TemporaryDirectory() as data_dir:
            process, url = start_server(Path(data_dir), common | envs[name], server_cpus or None)
            try:
                if args.route == "identify":  # a gallery to search
                    for i, image in enumerate(images[:20]):
                        httpx.post(
                            url + "/enroll",
                            data={"subject_id": f"s{i}"},
                            files={"images": ("a.jpg", image)},
                            timeout=60,
                        )
                rows = []
                for rate in args.rates:
                    results = asyncio.run(
                        offered_load(url, args.route, rate, args.seconds, images, seed=int(rate))
                    )
                    row = summarise(rate, args.seconds, results)
                    rows.append(row)
                    print(
                        f"{name:>13} {rate:6.1f}/s offered: {row['goodput_per_s']:6.1f}/s ok, "
                        f"p50 {row['p50_ms'] or 0:7.1f} p95 {row['p95_ms'] or 0:7.1f} "
                        f"p99 {row['p99_ms'] or 0:7.1f} ms, shed {row['shed_fraction']:.0%} "
                        f"(p99 {row['shed_p99_ms'] or 0:.1f} ms), other {row['other_statuses']}",
                        flush=True,
                    )
                    time.sleep(2)  # let the queue drain between rates
                report["configs"][name] = rows
            finally:
                process.terminate()
                process.wait(timeout=30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
