"""Embedding speed: an exported model and its variants (and optionally the PyTorch checkpoint
it came from), side by side in one run, at several batch sizes.

    python bench/embedder.py models/embedder.onnx [more.onnx ...] [--checkpoint run/checkpoint.pt]

Runs are interleaved (every model once per round, for several rounds) so machine noise hits
all of them alike; reports the median per-batch latency, faces per second and the ratio to the
first model, and writes a PNG next to the JSON results.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.vision.embedder import Embedder

RESULTS = Path(__file__).parent / "results"


def _faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    # Content does not change the work a CNN does; real faces are not needed for timing.
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# (input side, one call on a batch): each model is fed faces of its own size (112 for the
# ArcFace-style templates, 128 for OMZ's).
Runner = tuple[int, Callable[[np.ndarray], object]]


def _runners(args: argparse.Namespace) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    for path in args.models:
        embedder = Embedder(path, threads=args.threads, batch_size=1 << 20)
        runtime = (
            "onnxruntime" if embedder.providers[0].endswith("ExecutionProvider") else "OpenVINO"
        )
        name = f"{path.stem} ({embedder.contract.variant}, {runtime})"
        runners[name] = (embedder.contract.input.height, embedder.embed)
    if args.checkpoint:
        import torch

        from training.data import to_tensor
        from training.embedder import load_backbone

        torch.set_num_threads(args.threads)
        backbone, _ = load_backbone(args.checkpoint)

        @torch.no_grad()
        def eager(faces: np.ndarray) -> object:
            batch = torch.stack([to_tensor(f) for f in faces])
            return torch.nn.functional.normalize(backbone(batch), dim=1)

        # Our own backbones take 112 px crops (training/backbones.py INPUT_SIZE).
        runners[f"{args.checkpoint.parent.name} (PyTorch eager)"] = (112, eager)
    return runners


def matmul_peak_gmacs(threads: int, n: int = 1024, rounds: int = 7) -> float:
    """This CPU's dense float32 matrix-multiply rate, in billions of multiply-accumulates per
    second, through onnxruntime's own MatMul kernel (the one the model's layers run on) at
    the same thread count: the practical ceiling for any network here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    session.run(None, {"a": a, "b": a})
    best = min(_timed(lambda: session.run(None, {"a": a, "b": a})) for _ in range(rounds))
    return n**3 / best / 1e9


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--name", default="embedder")
    args = parser.parse_args()

    runners = _runners(args)
    results = []
    for batch_size in args.batch_sizes:
        faces = {size: _faces(batch_size, size) for size, _ in runners.values()}
        for size, run in runners.values():  # warm-up: first calls allocate and pick kernels
            run(faces[size])
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, (size, run) in runners.items():
                start = time.perf_counter()
                run(faces[size])
                times[name].append(time.perf_counter() - start)
        baseline = statistics.median(next(iter(times.values())))
        for name, samples in times.items():
            median = statistics.median(samples)
            results.append(
                {
                    "model": name,
                    "batch_size": batch_size,
                    "latency_ms": 1e3 * median,
                    "faces_per_s": batch_size / median,
                    "speedup_vs_first": baseline / median,
                }
            )
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), median of {args.rounds}"
    )
    print(f"{'model':<48} {'batch':>5} {'ms/batch':>10} {'faces/s':>9} {'vs first':>9}")
    for row in results:
        print(
            f"{row['model']:<48} {row['batch_size']:>5} {row['latency_ms']:>10.2f} "
            f"{row['faces_per_s']:>9.1f} {row['speedup_vs_first']:>8.2f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    peak = matmul_peak_gmacs(args.threads)
    print(f"matrix-multiply peak: {peak:.1f} GMAC/s at {args.threads} thread(s)")
    for path in args.models:
        macs = Embedder(path, threads=args.threads).contract.macs
        if not macs:
            continue
        best = max(r["faces_per_s"] for r in results if r["model"].startswith(path.stem))
        achieved = best * macs / 1e9
        print(
            f"{path.stem}: {macs / 1e9:.3f} GMAC per face x {best:.1f} faces/s = "
            f"{achieved:.1f} GMAC/s, {100 * achieved / peak:.0f}% of the matmul peak"
        )
        for row in results:
            if row["model"].startswith(path.stem):
                row["gmac_per_s"] = row["faces_per_s"] * macs / 1e9
                row["fraction_of_peak"] = row["gmac_per_s"] / peak
    payload = {"threads": args.threads, "matmul_peak_gmac_per_s": peak, "results": results}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    _plot(results, RESULTS / f"{args.name}.png", args.threads)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _plot(results: list[dict], path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    sizes = sorted({r["batch_size"] for r in results})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [
            next(r["faces_per_s"] for r in results if r["model"] == model and r["batch_size"] == b)
            for b in sizes
        ]
        ax.bar(np.arange(len(sizes)) + i * width, values, width, label=model)
    ax.set_xticks(
        np.arange(len(sizes)) + width * (len(models) - 1) / 2, [f"batch {b}" for b in sizes]
    )
    ax.set_ylabel("faces per second")
    ax.set_title(f"Embedding throughput, {threads} CPU thread(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
