"""Per-image cost of the torch-free preprocessing path: JPEG decode, face detection, alignment.

For each detector (MTCNN with its default config; SCRFD with its default adaptive input) and
each image size, the script times the steps `facemargin prepare` and the service run on one
upload: `decode_image(bytes)`, `detector.detect(pixels)`, then `align_face` on every face found
(as `service.vision.preprocess.detect_and_align` with `FacePolicy.all`).

Test images are built from the real 112x112 loose face crops under `--data`:

* 112: one crop as it is (the `facemargin prepare` case);
* 320, 640, 1280, 1920 (long side, 4:3 landscape): one, two or three crops upscaled (bicubic)
  so each face spans 1/3, 1/4, 1/5, 1/6 of the long side, pasted with feathered edges onto a
  background made of shuffled patches of *other* crops, blurred, so the canvas has the
  colours and JPEG entropy of a photo but no face structure of its own.

Each image is JPEG-encoded at quality 90 once; every repetition decodes those bytes again.
The faces placed are known, so the script checks that each is found (a warning if not).

Usage:
    python bench/detect_align.py                      # defaults, about 1-2 minutes
    python bench/detect_align.py --threads 0          # onnxruntime / OpenCV choose threads
    python bench/detect_align.py --sizes 640 1920 --repeats 50 --detectors scrfd

Threads: `--threads 1` (default) pins onnxruntime's intra-op threads and OpenCV to one thread,
so figures are per-core cost; `--threads 0` leaves both libraries at their defaults.

Output: a table on stdout, the same as JSON in `bench/results/detect_align.json`, and a plot
`bench/results/detect_align.png` when matplotlib is installed (skipped with a message if not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from composed_photos import JPEG_QUALITY, TestImage, build_images
from PIL import Image

from service.vision.alignment import align_face
from service.vision.detection import Detector, Face
from service.vision.imaging import decode_image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data")
DEFAULT_MTCNN_DIR = REPO / "models"
# Research-licensed test file: read in place, never copied into the repository.
DEFAULT_SCRFD = Path("/work/shared/models/scrfd_500m.onnx")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = (112, 320, 640, 1280, 1920)
STAGES = ("decode", "detect", "align_per_face", "total")


@dataclass
class Row:
    detector: str
    size: int
    width: int
    height: int
    jpeg_kib: float
    faces_placed: int
    faces_found: int  # placed faces with a detection centred on them
    detections: int  # everything the detector returned (extras = detections - found)
    repeats: int
    ms: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> median, p90


# --------------------------------------------------------------------------- detectors


def make_detectors(args: argparse.Namespace) -> dict[str, Detector]:
    detectors: dict[str, Detector] = {}
    if "mtcnn" in args.detectors:
        from service.vision.mtcnn import MtcnnConfig, MtcnnDetector

        detectors["MTCNN"] = MtcnnDetector(args.mtcnn_dir, MtcnnConfig(), threads=args.threads)
    if "scrfd" in args.detectors:
        if args.scrfd_model.is_file():
            from service.vision.scrfd import ScrfdDetector

            detectors["SCRFD"] = ScrfdDetector(args.scrfd_model, threads=args.threads)
        else:
            print(f"SCRFD skipped: {args.scrfd_model} not found (see --scrfd-model)", flush=True)
    return detectors


def count_found(faces: list[Face], regions: list[tuple[float, float, float, float]]) -> int:
    """Placed faces that have a detection centred inside them."""
    found = 0
    for x1, y1, x2, y2 in regions:
        if any(x1 <= f.center[0] <= x2 and y1 <= f.center[1] <= y2 for f in faces):
            found += 1
    return found


# --------------------------------------------------------------------------- timing


def run_once(jpeg: bytes, detector: Detector) -> tuple[dict[str, float], list[Face]]:
    """One upload through the pipeline; seconds per stage."""
    t0 = time.perf_counter()
    pixels = decode_image(jpeg).pixels
    t1 = time.perf_counter()
    faces = detector.detect(pixels)
    t2 = time.perf_counter()
    for face in faces:
        align_face(pixels, face.landmarks)
    t3 = time.perf_counter()
    return {
        "decode": t1 - t0,
        "detect": t2 - t1,
        # Per face, because its cost is per face and independent of the image size.
        "align_per_face": (t3 - t2) / len(faces) if faces else float("nan"),
        "total": t3 - t0,
    }, faces


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in STAGES:
        values = np.array([s[stage] for s in samples]) * 1e3
        if np.isnan(values).all():
            out[stage] = {"median": float("nan"), "p90": float("nan")}
        else:
            out[stage] = {
                "median": float(np.nanmedian(values)),
                "p90": float(np.nanpercentile(values, 90)),
            }
    return out


def bench_cell(
    name: str,
    detector: Detector,
    image: TestImage,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    warmup: int,
) -> Row:
    # Warm-up pays for onnxruntime's first run at each new input shape (MTCNN's pyramid and
    # SCRFD's adaptive input change shape with the image size) and fills caches.
    for _ in range(warmup):
        stage_s, faces = run_once(image.jpeg, detector)
    # A cap on time per cell keeps the large sizes affordable; never fewer than min_repeats.
    n = int(min(repeats, max(min_repeats, budget_s // max(stage_s["total"], 1e-6))))
    gc.collect()
    samples = []
    for _ in range(n):
        stage_s, faces = run_once(image.jpeg, detector)
        samples.append(stage_s)
    height, width = image.pixels.shape[:2]
    row = Row(
        detector=name,
        size=image.size,
        width=width,
        height=height,
        jpeg_kib=len(image.jpeg) / 1024,
        faces_placed=len(image.faces),
        faces_found=count_found(faces, image.faces),
        detections=len(faces),
        repeats=n,
        ms=summarise(samples),
    )
    if row.faces_found < row.faces_placed:
        print(
            f"WARNING: {name} found {row.faces_found} of {row.faces_placed} placed faces at "
            f"size {image.size}; its timings are not those of a successful detection",
            flush=True,
        )
    return row


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "threads": threads if threads > 0 else "library default (0)",
        "opencv_threads": cv2.getNumThreads(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: float) -> str:
    if np.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = f"{'detector':<8} {'size':>5} {'WxH':>10} {'faces':>7} {'reps':>4}" + "".join(
        f" {s.replace('_per_face', '/face'):>17}" for s in STAGES
    )
    sub = " " * 38 + "".join(f" {'median':>8} {'p90':>8}" for _ in STAGES)
    lines = [head, sub, "-" * len(sub)]
    for r in rows:
        found = f"{r.faces_found}/{r.faces_placed}"
        if r.detections > r.faces_found:
            found += f"+{r.detections - r.faces_found}"
        cells = "".join(f" {_fmt(r.ms[s]['median']):>8} {_fmt(r.ms[s]['p90']):>8}" for s in STAGES)
        lines.append(
            f"{r.detector:<8} {r.size:>5} {f'{r.width}x{r.height}':>10} {found:>7} {r.repeats:>4}"
            + cells
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)", flush=True)
        return
    fig, ax = plt.subplots(figsize=(10, 5.5))
    styles = {"decode": ":", "detect": "-", "align_per_face": "-.", "total": "--"}
    detectors = list(dict.fromkeys(r.detector for r in rows))
    colours = dict(zip(detectors, ("tab:blue", "tab:orange", "tab:green"), strict=False))
    for name in detectors:
        mine = [r for r in rows if r.detector == name]
        sizes = [r.size for r in mine]
        for stage in STAGES:
            ax.plot(
                sizes,
                [r.ms[stage]["median"] for r in mine],
                styles[stage],
                marker="o",
                markersize=3,
                color=colours.get(name),
                label=f"{name} {stage.replace('_', ' ')}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({r.size for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("image long side (px)")
    ax.set_ylabel("ms per image (median); align: ms per face")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    # Outside the axes: inside, it would cover the small-image points.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time JPEG decode, face detection and alignment per image at several sizes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="face data root")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="image long sides in px; 112 is a raw crop",
    )
    parser.add_argument(
        "--detectors",
        nargs="+",
        choices=("mtcnn", "scrfd"),
        default=["mtcnn", "scrfd"],
        help="default configs: MTCNN min face 20 px, SCRFD adaptive input",
    )
    parser.add_argument(
        "--mtcnn-dir", type=Path, default=DEFAULT_MTCNN_DIR, help="mtcnn_{p,r,o}net.onnx folder"
    )
    parser.add_argument(
        "--scrfd-model", type=Path, default=DEFAULT_SCRFD, help="skipped when the file is absent"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime intra-op and OpenCV threads; 0 = the libraries' defaults",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per cell, at most")
    parser.add_argument("--min-repeats", type=int, default=5, help="timed runs per cell, at least")
    parser.add_argument(
        "--budget",
        type=float,
        default=10.0,
        help="seconds per cell; above it, repeats drop towards --min-repeats",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per cell")
    parser.add_argument("--seed", type=int, default=0, help="which crops, where they go")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON and PNG folder")
    args = parser.parse_args(argv)
    if args.threads < 0 or args.repeats < 1 or args.min_repeats < 1 or args.warmup < 1:
        parser.error("--threads must be >= 0; --repeats, --min-repeats, --warmup >= 1")
    # The crops are 112 px: a smaller "size" would silently be a 112 px image.
    if min(args.sizes) < 112:
        parser.error("--sizes must be >= 112 (the size of the face crops)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        # OpenCV's resize/warp would otherwise fan out over every core and blur per-core cost.
        cv2.setNumThreads(args.threads)
    info = machine(args.threads)
    images = build_images(args.data, sorted(set(args.sizes)), args.seed)
    detectors = make_detectors(args)
    if not detectors:
        print("no detector to run", file=sys.stderr)
        return 1

    rows = []
    for name, detector in detectors.items():
        for image in images:
            # Progress on stderr keeps stdout to the report itself.
            print(f"  {name} {image.size} ...", file=sys.stderr, flush=True)
            rows.append(
                bench_cell(
                    name, detector, image, args.repeats, args.min_repeats, args.budget, args.warmup
                )
            )
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    info["torch_imported"] = "torch" in sys.modules

    print(
        f"machine: {info['cpu']}, {info['cores']} cores, onnxruntime {info['onnxruntime']}, "
        f"opencv {info['opencv']}, threads {info['threads']}, "
        f"load average {info['load_average_1_5_15']} -> {info['load_average_after']}, "
        f"{info['date']}"
    )
    print("images:")
    for image in images:
        print(
            f"  {image.size:>5}: {image.description}, JPEG q{JPEG_QUALITY} {len(image.jpeg) / 1024:.0f} KiB"
        )
    print("ms per image (align: ms per face); faces = placed faces found [+ extra detections]")
    print(table(rows))

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "images": [
            {"size": i.size, "description": i.description, "jpeg_bytes": len(i.jpeg)}
            for i in images
        ],
        "rows": [asdict(r) for r in rows],
    }
    json_path = args.out / "detect_align.json"
    json_path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    print(f"wrote {json_path}")
    plot(
        rows,
        args.out / "detect_align.png",
        f"decode / detect / align, {info['cpu']}, threads={info['threads']}, "
        f"onnxruntime {info['onnxruntime']}",
    )
    return 0


def _json_safe(value: object) -> object:
    """NaN (align when no face was found) becomes null: NaN is not valid JSON."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
