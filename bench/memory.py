"""Resident memory of a real server from start through its first requests, per configuration.

    python bench/memory.py                      # as shipped, and with glibc's arenas capped
    python bench/memory.py --requests 4000

Starts `facemargin serve` with a scratch gallery for each configuration and drives the same
mixed traffic as bench/soak.py (verify, identify, enroll, list, delete, bad uploads; 4
clients; real CFP photos). Reads the server's RSS (anonymous and file-backed, from
/proc/PID/status) and thread count at /ready and after each milestone of requests, prints a
table and writes JSON and a PNG beside it. The second configuration caps glibc's per-thread
malloc arenas (MALLOC_ARENA_MAX=2), the knob a container operator has; what else was tried
and what it found is in bench/README.md ("Memory").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from live_server import start_server
from soak import traffic

RESULTS = Path(__file__).parent / "results"
CONFIGS: dict[str, dict[str, str]] = {
    "as shipped": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    # The bf16 variant: OpenVINO's runtime and compiled model instead of onnxruntime's.
    "bf16 variant": {
        "FACEMARGIN_MODEL_PATH": str(
            Path(__file__).resolve().parent.parent
            / "models"
            / "face-reidentification-retail-0095-bf16.onnx"
        )
    },
}


def status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            fields[key] = int(value)
    return fields


def measure(env: dict[str, str], milestones: list[int], clients: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = start_server(Path(data_dir), {"OMP_NUM_THREADS": "1"} | env)
        try:
            time.sleep(1)
            rows.append({"requests": 0} | status(process.pid))
            stop = threading.Event()
            codes: Counter = Counter()
            workers = [
                threading.Thread(target=traffic, args=(url, stop, codes, seed), daemon=True)
                for seed in range(clients)
            ]
            for worker in workers:
                worker.start()
            for milestone in milestones:
                while sum(codes.values()) < milestone:
                    time.sleep(0.05)
                rows.append({"requests": sum(codes.values())} | status(process.pid))
                print(f"  {rows[-1]}", flush=True)
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
            errors = sum(n for k, n in codes.items() if k.split()[1].startswith("5"))
            rows[-1]["server_errors"] = errors
        finally:
            process.terminate()
            process.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="configuration names to run")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory")
    args = parser.parse_args()
    milestones = [m for m in (100, 250, 500, 1000, 2000, 4000, 8000) if m < args.requests]
    milestones.append(args.requests)
    results = {}
    for name, env in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        print(f"{name}:", flush=True)
        results[name] = measure(env, milestones, args.clients)
    print(f"\n{'configuration':22} {'at /ready':>10} " + " ".join(f"{m:>8}" for m in milestones))
    for name, rows in results.items():
        cells = " ".join(f"{r['VmRSS']:8.1f}" for r in rows[1:])
        print(f"{name:22} {rows[0]['VmRSS']:10.1f} {cells}   MB RSS after N requests")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, rows in results.items():
        axis.plot([r["requests"] for r in rows], [r["VmRSS"] for r in rows], marker="o", label=name)
    axis.set(
        xlabel="requests served", ylabel="server RSS (MB)", title="resident memory after start"
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
