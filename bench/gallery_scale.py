"""Identify search at gallery scale: latency, memory and build time of the service's own
`VectorIndex` at 10^4, 10^5 and 10^6 templates, exact against HNSW, with HNSW's recall@1
measured against the exact index on the same probes.

    python bench/gallery_scale.py                               # 10^4, 10^5, 10^6; 128-d
    python bench/gallery_scale.py --sizes 1000000 --ef-search 128 512 2048

Synthetic templates as in `gallery_rebuild.py`: subjects with a random unit centre and five
templates around it; probes are noisy copies of templates (cosine about 0.7, a typical
genuine match). The centres are uniform on the sphere, the hardest case for an approximate
index: real embeddings are far from isotropic (our model puts 90% of its variance in 16 of
its 128 dimensions on CFP), which helps HNSW. So the recall here is a floor.

Each (size, kind) runs in a fresh child process, so its resident-memory growth is the
index's alone. One HNSW graph per size is searched at every `--ef-search` breadth
(FACEMARGIN_HNSW_EF_SEARCH), since that is the knob that trades its latency for recall. One
query at a time with top_k=5, as `/identify` asks for one face. Writes
bench/results/gallery-scale.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from gallery_rebuild import probes, synthetic_subjects
from live_server import rss_mb
from tqdm import tqdm

from service.gallery.index import VectorIndex

RESULTS = Path(__file__).parent / "results"
PER_SUBJECT = 5
ADD_CHUNK = 10_000


def timed_searches(index: VectorIndex, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds per single-query search, and each query's top-1 id."""
    index.search(probe[:10], 5)  # warm-up
    latencies, top1 = [], []
    for query in probe:
        started = time.perf_counter()
        _, found = index.search(query[None], 5)
        latencies.append(time.perf_counter() - started)
        top1.append(found[0, 0])
    return 1000 * np.array(latencies), np.array(top1)


def one(
    size: int, kind: str, breadths: list[int], dim: int, queries: int, seed: int, scratch: Path
) -> list[dict]:
    """Build one index and time single-query searches (at each HNSW breadth); top-1 ids go to
    scratch, named after the row, for recall."""
    subjects = size // PER_SUBJECT
    templates = np.concatenate(list(synthetic_subjects(subjects, PER_SUBJECT, dim, seed)))
    probe = probes(templates, queries, seed)
    ids = np.arange(len(templates), dtype=np.int64)
    before = rss_mb(os.getpid())
    index = VectorIndex(dim, kind)
    started = time.perf_counter()
    with tqdm(total=len(templates), desc=f"{kind} {size:,}", unit="vec", file=sys.stderr) as bar:
        for start in range(0, len(templates), ADD_CHUNK):
            index.add(ids[start : start + ADD_CHUNK], templates[start : start + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, len(templates) - start))
    build = time.perf_counter() - started
    memory = rss_mb(os.getpid()) - before
    rows = []
    for breadth in breadths if kind == "hnsw" else [None]:
        if breadth is not None:
            index.ef_search = breadth
        ms, top1 = timed_searches(index, probe)
        label = kind if breadth is None else f"{kind} ef {breadth}"
        np.save(scratch / f"{label}-{size}.npy", top1)
        rows.append(
            {
                "size": size,
                "kind": kind,
                "label": label,
                "ef_search": breadth,
                "build_s": build,
                "memory_mib": memory,
                "bytes_per_template": memory * 2**20 / size,
                "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, recall, memory) = plt.subplots(1, 3, figsize=(15, 4.4))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for label, colour in zip(labels, plt.get_cmap("tab10").colors, strict=False):
        mine = [r for r in rows if r["label"] == label]
        sizes = [r["size"] for r in mine]
        latency.plot(sizes, [r["p50_ms"] for r in mine], "o-", color=colour, label=f"{label} p50")
        latency.plot(sizes, [r["p99_ms"] for r in mine], "--", color=colour, alpha=0.5)
        if label != "exact":
            recall.plot(sizes, [r["recall_at_1"] for r in mine], "o-", color=colour, label=label)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        first = {r["size"]: r for r in reversed(rows) if r["kind"] == kind}
        sizes = sorted(first)
        memory.plot(sizes, [first[n]["memory_mib"] for n in sizes], "o-", label=kind)
    latency.axhline(10, color="grey", linestyle=":", label="10 ms target")
    recall.axhline(0.99, color="grey", linestyle=":", label="0.99 target")
    for axes, title, unit, log_y in (
        (latency, "single-query search, top_k=5 (dashed: p99)", "ms", True),
        (recall, "HNSW recall@1 against exact", "recall@1", False),
        (memory, "index memory (resident growth)", "MiB", True),
    ):
        axes.set_xscale("log")
        if log_y:
            axes.set_yscale("log")
        axes.set_xlabel("templates")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["exact", "hnsw"])
    parser.add_argument(
        "--ef-search", type=int, nargs="+", default=[128, 512, 2048], help="HNSW breadths"
    )
    parser.add_argument("--dim", type=int, default=128, help="the shipped model's size")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gallery-scale")
    parser.add_argument(
        "--one", nargs=3, metavar=("SIZE", "KIND", "SCRATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    if args.one:
        size, kind, scratch = args.one
        found = one(
            int(size), kind, args.ef_search, args.dim, args.queries, args.seed, Path(scratch)
        )
        print(json.dumps(found))
        return
    if args.kinds[0] != "exact":
        parser.error("recall@1 is measured against exact: put it first in --kinds")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"faiss {faiss.__version__} with {args.threads} thread(s); {args.dim}-d, "
        f"{args.queries} single-query searches per index"
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            for kind in args.kinds:
                command = [sys.executable, __file__, "--one", str(size), kind, scratch]
                command += ["--dim", str(args.dim), "--queries", str(args.queries)]
                command += ["--threads", str(args.threads), "--seed", str(args.seed)]
                command += ["--ef-search", *map(str, args.ef_search)]
                finished = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
                exact = np.load(Path(scratch) / f"exact-{size}.npy")
                for row in json.loads(finished.stdout.strip().splitlines()[-1]):
                    mine = np.load(Path(scratch) / f"{row['label']}-{size}.npy")
                    row["recall_at_1"] = float(np.mean(mine == exact))
                    rows.append(row)
                    print(
                        f"{row['label']:13s} {size:>9,}: build {row['build_s']:7.1f} s, "
                        f"memory {row['memory_mib']:6.0f} MiB "
                        f"({row['bytes_per_template']:.0f} B/template), search p50 "
                        f"{row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, "
                        f"p99 {row['p99_ms']:.2f} ms, recall@1 {row['recall_at_1']:.3f}",
                        flush=True,
                    )
    report = {
        "machine": platform.node(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "dim": args.dim,
        "queries": args.queries,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
