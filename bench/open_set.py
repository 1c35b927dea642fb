"""Open-set identification as the gallery grows: a per-comparison FAR against a
gallery-size-aware FPIR, measured with the served model on CFP.

CFP's open-set split (`training.open_set.split_open_set`: half of the 500 people enrolled
with their first frontal photo; their other 9 photos are mated probes, every photo of the
other 250 people a non-mated probe), with the gallery grown by distractor subjects (one face
each of other people, from a prepared training tree; `../shared/data/train` holds no CFP
person). For each gallery size, both of /identify's rules pick a threshold exactly as the
service does (`ModelContract.threshold_on_curve`, `threshold_for_fpir`), and the script
counts:

* FPIR: non-mated probes whose best candidate reaches the threshold (a stranger matched);
* DIR: mated probes whose best candidate is their own subject and reaches the threshold.

    python bench/open_set.py --cfp-aligned ALIGNED_CFP --distractors ALIGNED_TRAIN \\
        [--model models/face-reidentification-retail-0095.onnx] [--sizes 25 250 1000 5000]

Prints a table and writes bench/results/open-set.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from service.vision.embedder import Embedder
from training.data import crop_size, load_rgb
from training.open_set import split_open_set
from training.plots import new_figure

REPO = Path(__file__).resolve().parents[1]


def embed(embedder: Embedder, files: list[Path], what: str) -> np.ndarray:
    size = crop_size(files[0])
    rows, start = [], time.perf_counter()
    for i in range(0, len(files), 64):
        faces = np.stack([load_rgb(f, size) for f in files[i : i + 64]])
        rows.append(embedder.embed(faces).vectors)
    print(f"embedded {len(files)} {what} in {time.perf_counter() - start:.0f} s")
    return np.concatenate(rows)


def measure(
    gallery: np.ndarray,
    gallery_ids: np.ndarray,
    mated: np.ndarray,
    mated_ids: np.ndarray,
    strangers: np.ndarray,
    threshold: float,
) -> tuple[float, float]:
    """(FPIR, DIR) of an exhaustive search at `threshold`."""
    best_stranger = (strangers @ gallery.T).max(axis=1)
    scores = mated @ gallery.T
    top = scores.argmax(axis=1)
    hit = (gallery_ids[top] == mated_ids) & (scores.max(axis=1) >= threshold)
    return float(np.mean(best_stranger >= threshold)), float(np.mean(hit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfp-aligned", type=Path, required=True)
    parser.add_argument("--distractors", type=Path, required=True)
    parser.add_argument(
        "--model", type=Path, default=REPO / "models" / "face-reidentification-retail-0095.onnx"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 250, 1000, 5000])
    parser.add_argument("--far", type=float, default=1e-3, help="the per-comparison rule")
    parser.add_argument("--fpir", type=float, default=1e-2, help="the gallery-aware rule")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "open-set.png")
    args = parser.parse_args()

    embedder = Embedder(args.model, threads=2)
    contract = embedder.contract
    frontal = sorted((args.cfp_aligned / "Data" / "Images").glob("*/frontal/*"))
    ids = np.array([p.parent.parent.name for p in frontal])
    paths = [p.relative_to(args.cfp_aligned).as_posix() for p in frontal]
    enrolled, probes = split_open_set(list(ids), paths, known_fraction=0.5, seed=0)
    vectors = embed(embedder, frontal, "CFP frontal faces")
    known = set(ids[enrolled])
    mated = np.array([i for i in probes if ids[i] in known])
    strangers = np.array([i for i in probes if ids[i] not in known])

    folders = sorted(p for p in args.distractors.glob("*/*") if p.is_dir())
    extra = max(args.sizes) - len(enrolled)
    rng = np.random.default_rng(0)
    chosen = [folders[i] for i in sorted(rng.choice(len(folders), extra, replace=False))]
    distractor_files = [sorted(f.iterdir())[0] for f in chosen]
    distractors = embed(embedder, distractor_files, "distractor faces")

    fixed = contract.threshold_on_curve(args.far)
    if fixed is None:
        raise SystemExit(f"{args.model.name} has no threshold at FAR {args.far:g}")
    print(f"\nmodel {contract.model_id}; {len(mated)} mated and {len(strangers)} non-mated probes")
    print(
        f"| gallery subjects | far={args.far:g} per comparison: threshold, FPIR, DIR "
        f"| fpir={args.fpir:g}: threshold, FPIR, DIR |"
    )
    print("|---|---|---|")
    rows = []
    for size in args.sizes:
        n_known = min(size, len(enrolled))
        subset = enrolled[:n_known]
        gallery = np.concatenate([vectors[subset], distractors[: size - n_known]])
        gallery_ids = np.concatenate([ids[subset], [f"d{i}" for i in range(size - n_known)]])
        in_gallery = np.isin(ids[mated], ids[subset])
        found = contract.threshold_for_fpir(args.fpir, size)
        assert found is not None
        aware, _ = found
        results = []
        for threshold in (fixed, aware):
            fpir, dir_ = measure(
                gallery,
                gallery_ids,
                vectors[mated[in_gallery]],
                ids[mated[in_gallery]],
                vectors[strangers],
                threshold,
            )
            results.append((threshold, fpir, dir_))
        rows.append((size, results))
        cells = " | ".join(f"{t:.4f}, {100 * f:.2f}%, {100 * d:.2f}%" for t, f, d in results)
        print(f"| {size} | {cells} |")

    fig = new_figure(10, 4.2)
    left, right = fig.subplots(1, 2)
    sizes = [r[0] for r in rows]
    for k, label in ((0, f"far={args.far:g} per comparison"), (1, f"fpir={args.fpir:g}")):
        left.plot(sizes, [100 * r[1][k][1] for r in rows], marker="o", label=label)
        right.plot(sizes, [100 * r[1][k][2] for r in rows], marker="o", label=label)
    left.axhline(100 * args.fpir, color="grey", linestyle=":", linewidth=1)
    left.set(xscale="log", xlabel="gallery subjects", ylabel="strangers matched (FPIR) %")
    right.set(xscale="log", xlabel="gallery subjects", ylabel="mated probes found (DIR) %")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Open set on CFP frontal, {contract.model_id}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
