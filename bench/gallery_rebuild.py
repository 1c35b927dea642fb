"""Gallery cost at size: filling it, opening it (migrations + index rebuild), identifying.

Synthetic data: each subject has a random unit centre and `--per-subject` templates around it
(cosine about 0.8 to the centre, like several photos of one face); probes are templates with
noise added (cosine about 0.7 to the template, a typical genuine match).

1. Fill: an empty SQLite gallery gets every subject through `Gallery.enroll`, one committed
   (fsync'ed) transaction per subject, as the HTTP service would do it.
2. Open: `Gallery.open` on the filled file, once per index kind: migrations (a no-op check),
   streaming every template out of SQLite, building the index and the subject means. HNSW is
   opened twice: the first open builds the graph and writes its snapshot, the second reads
   that snapshot back, as a restarted replica does.
3. Identify: one probe per call, `top_k=5`, under both rules; latency p50/p95 per call.
   HNSW recall@1 is measured against the exact index on the same probes.

Usage:
    python bench/gallery_rebuild.py                        # 100,000 templates of 512-d
    python bench/gallery_rebuild.py --templates 20000 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from service.gallery import Gallery, NewTemplate


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def subject_templates(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    centre = unit_rows(rng.standard_normal((1, dim)))
    # Per-dimension noise s gives cosine 1/sqrt(1 + dim s^2) to the centre: 0.8 here.
    noise = rng.standard_normal((count, dim)) * (0.75 / np.sqrt(dim))
    return unit_rows(centre + noise)


def synthetic_subjects(
    subjects: int, per_subject: int, dim: int, seed: int
) -> Iterator[np.ndarray]:
    """Each subject's templates, (per_subject, dim); the same for the same arguments."""
    rng = np.random.default_rng(seed)
    for _ in range(subjects):
        yield subject_templates(rng, per_subject, dim)


def fill(url: str, dim: int, generated: Iterator[np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds to enroll every subject, and each subject's first template."""
    firsts = []
    with Gallery.open(url, "bench-model", dim) as gallery:
        started = time.perf_counter()
        for i, vectors in enumerate(generated):
            gallery.enroll(f"subject-{i:07d}", [NewTemplate(v) for v in vectors])
            firsts.append(vectors[0])
        return time.perf_counter() - started, np.stack(firsts)


def probes(templates: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Noisy copies of templates picked at random: cosine about 0.7 to the template."""
    rng = np.random.default_rng(seed + 1)
    picked = templates[rng.choice(len(templates), count, replace=False)]
    noise = rng.standard_normal(picked.shape) * (1.02 / np.sqrt(picked.shape[1]))
    return unit_rows(picked + noise)


def measure(
    url: str, dim: int, kind: str, queries: np.ndarray, snapshots: Path | None = None
) -> dict:
    started = time.perf_counter()
    gallery = Gallery.open(url, "bench-model", dim, kind, snapshot_dir=snapshots)
    opened = time.perf_counter() - started
    figures: dict = {
        "open_s": opened,
        "templates": gallery.stats().indexed_templates,
        "loaded_from": gallery.loaded_from,
    }
    try:
        gallery.identify(queries[:5], 5)  # warm-up
        for rule in ("best", "mean"):
            latencies, top1 = [], []
            for query in queries:
                started = time.perf_counter()
                [candidates] = gallery.identify(query[None], 5, rule)
                latencies.append(time.perf_counter() - started)
                top1.append(candidates[0].subject_id)
            figures[rule] = {
                "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                "p95_ms": 1000 * float(np.percentile(latencies, 95)),
                "top1": top1,
            }
    finally:
        gallery.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--per-subject", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads; 0: default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--db",
        type=Path,
        help="SQLite file: filled if absent, else reused as filled by an earlier run with the "
        "same --templates/--per-subject/--dim/--seed (default: a temporary file)",
    )
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    subjects = args.templates // args.per_subject
    total = subjects * args.per_subject
    generated = synthetic_subjects(subjects, args.per_subject, args.dim, args.seed)

    with tempfile.TemporaryDirectory() as scratch:
        path = args.db or Path(scratch) / "gallery.db"
        url = f"sqlite:///{path}"
        print(
            f"{platform.processor() or platform.machine()}, faiss {faiss.__version__} "
            f"with {faiss.omp_get_max_threads()} threads"
        )
        print(
            f"gallery: {total:,} templates ({subjects:,} subjects x {args.per_subject}), "
            f"{args.dim}-d, SQLite {path}"
        )
        if path.exists():
            firsts = np.stack([vectors[0] for vectors in generated])
            print("fill: skipped, reusing the file")
        else:
            elapsed, firsts = fill(url, args.dim, generated)
            print(
                f"fill: {elapsed:.1f} s, {total / elapsed:,.0f} templates/s "
                f"({subjects / elapsed:,.0f} enroll transactions/s); "
                f"file {path.stat().st_size / 2**20:,.0f} MiB"
            )
        queries = probes(firsts, args.queries, args.seed)
        snapshots = Path(scratch) / "index"
        results = {
            "exact": measure(url, args.dim, "exact", queries),
            # The first HNSW open builds the graph (and writes its snapshot); the second reads
            # the snapshot back, as a restarted replica does.
            "hnsw": measure(url, args.dim, "hnsw", queries, snapshots),
            "hnsw, snapshot": measure(url, args.dim, "hnsw", queries, snapshots),
        }
    if results["exact"]["templates"] != total:
        parser.error(
            f"the gallery holds {results['exact']['templates']:,} templates, not {total:,}"
        )

    for kind, figures in results.items():
        print(
            f"{kind}: open {figures['open_s']:.1f} s from the {figures['loaded_from']} "
            f"({figures['templates'] / figures['open_s']:,.0f} templates/s)"
        )
        for rule in ("best", "mean"):
            line = f"       identify top_k=5 rule={rule}: p50 {figures[rule]['p50_ms']:.2f} ms, "
            line += f"p95 {figures[rule]['p95_ms']:.2f} ms"
            if kind != "exact":
                agree = np.mean(
                    [
                        a == b
                        for a, b in zip(
                            figures[rule]["top1"], results["exact"][rule]["top1"], strict=True
                        )
                    ]
                )
                line += f", top-1 agrees with exact on {agree:.1%}"
            print(line)


if __name__ == "__main__":
    main()
