"""12 MP phone photos against small ones: decode, detect (YuNet) and align, today's path and
the reduced-decode path side by side in one run.

Today's path: `decode_image(max_side=None)` (all 12 MP decoded), YuNet, then one bilinear
`cv2.warpAffine` onto the template (what `align_face` did before it learned to area-average).
New path: `decode_image()` (a large JPEG decoded at 1/2, 1/4 or 1/8 scale by libjpeg, long side
>= `service.vision.imaging.WORKING_SIDE`), YuNet, `align_face` (area-averages first when the face is
over twice the template's size).

The large photos are built in memory at run time from real CFP frontal photos (112x112 face
crops in this data set): each scaled up to 3000x3000 (bicubic) and centred on a grey 4000x3000
canvas, so the face is ~1,200 px across, then saved as JPEG quality 90. Nothing is written to
disk. Besides time, the run reports how far apart the two paths' aligned crops are, and how far
each is from aligning the original small photo at the same landmarks (the upscale's ground
truth, so the difference is sampling alone: what aliasing costs), over the crop pixels that lie
inside the original photo.

Run: python bench/large_photos.py [--photos 20] [--template arcface-112-5pt]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.vision.alignment import align_face, alignment_matrix, template_named  # noqa: E402
from service.vision.imaging import WORKING_SIDE, decode_image  # noqa: E402

CFP = REPO.parent / "shared" / "data" / "val" / "cfp" / "Data" / "Images"
CANVAS = (4000, 3000)
QUALITY = 90


def build_detector():
    try:
        from service.vision.preprocess import DetectorConfig
        from service.vision.preprocess import build_detector as build

        return build(DetectorConfig(threads=1))
    except ImportError:  # an older tree, before service/vision
        from service.vision.yunet import YunetDetector

        return YunetDetector(REPO / "models" / "yunet.onnx", threads=1)


def placement(photo: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the photo scaled up to fit width x height, centred."""
    scale = min(width / photo.shape[1], height / photo.shape[0])
    w, h = round(photo.shape[1] * scale), round(photo.shape[0] * scale)
    return (width - w) // 2, (height - h) // 2, w, h


def fit(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo scaled up to fit width x height, centred on a grey canvas."""
    x0, y0, w, h = placement(photo, width, height)
    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[y0 : y0 + h, x0 : x0 + w] = cv2.resize(photo, (w, h), interpolation=cv2.INTER_CUBIC)
    return canvas


def on_original(points: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """Points on the 12 MP canvas carried back onto the small photo (pixel centres)."""
    x0, y0, w, h = placement(photo, *CANVAS)
    scale = np.array([w / photo.shape[1], h / photo.shape[0]])
    return (points - [x0, y0] + 0.5) / scale - 0.5


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def plain_align(image: np.ndarray, landmarks: np.ndarray, template) -> np.ndarray:
    """align_face as it was: one bilinear warp, whatever the scale."""
    matrix = alignment_matrix(landmarks, template)
    size = (template.size, template.size)
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)


def run_path(data: bytes, detector, template, new: bool):
    """Stage times, the aligned crop and the landmarks on the photo as sent (None: no face)."""
    t0 = time.perf_counter()
    decoded = decode_image(data, max_side=WORKING_SIDE if new else None)
    t1 = time.perf_counter()
    faces = detector.detect(decoded.pixels)
    t2 = time.perf_counter()
    if not faces:
        return {"decode": t1 - t0, "detect": t2 - t1, "align": 0.0}, None, None
    aligner = align_face if new else plain_align
    crop = aligner(decoded.pixels, faces[0].landmarks, template)
    t3 = time.perf_counter()
    landmarks = faces[0].landmarks.astype(np.float64) / decoded.scale
    return {"decode": t1 - t0, "detect": t2 - t1, "align": t3 - t2}, crop, landmarks


def stats(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)) * 1e3, float(np.percentile(values, 90)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--template", default="arcface-112-5pt")
    parser.add_argument("--png", type=int, default=3, help="12 MP PNGs to time (0: skip)")
    args = parser.parse_args()

    paths = sorted(CFP.glob("*/frontal/*.jpg"))
    if not paths:
        sys.exit(f"no photos under {CFP}")
    paths = [paths[i * len(paths) // args.photos] for i in range(args.photos)]
    template = template_named(args.template)
    detector = build_detector()

    originals = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    small = [p.read_bytes() for p in paths]
    large = [jpeg(fit(o, *CANVAS)) for o in tqdm(originals, desc="building 12 MP JPEGs")]

    for data in (small[0], large[0]):  # warm-up: sessions, allocators, caches
        for new in (False, True):
            run_path(data, detector, template, new)

    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    diffs: dict[str, list[float]] = {"paths": [], "today_vs_orig": [], "new_vs_orig": []}
    for i in tqdm(range(len(paths)), desc="timing"):
        for kind, data in (("small", small[i]), ("12 MP", large[i])):
            crops, points = {}, {}
            for path in ("today", "new"):
                timing, crops[path], points[path] = run_path(
                    data, detector, template, path == "new"
                )
                bucket = times.setdefault((kind, path), {})
                for stage, value in timing.items():
                    bucket.setdefault(stage, []).append(value)
                bucket.setdefault("total", []).append(sum(timing.values()))
            if kind == "12 MP" and crops["today"] is not None and crops["new"] is not None:
                diffs["paths"].append(np.abs(crops["today"].astype(int) - crops["new"]).mean())
                for path in ("today", "new"):
                    # The original photo aligned at this path's landmarks, and which crop
                    # pixels come from inside it.
                    small_points = on_original(points[path], originals[i])
                    reference = align_face(originals[i], small_points, template)
                    white = np.full_like(originals[i], 255)
                    inside = (align_face(white, small_points, template) == 255).all(axis=2)
                    error = np.abs(crops[path].astype(int) - reference)[inside]
                    diffs[f"{path}_vs_orig"].append(error.mean())

    print(
        f"\n{len(paths)} CFP photos ({originals[0].shape[1]}x{originals[0].shape[0]}) and the"
        f" same upscaled to {CANVAS[0]}x{CANVAS[1]} JPEG q{QUALITY}; YuNet 1 thread;"
        f" template {template.name}; WORKING_SIDE={WORKING_SIDE}; ms, median / p90\n"
    )
    stages = ("decode", "detect", "align", "total")
    print(f"| photo | path | {' | '.join(stages)} |")
    print("|---|---|" + "---:|" * len(stages))
    for (kind, path), bucket in times.items():
        cells = [" / ".join(f"{v:.1f}" for v in stats(bucket[s])) for s in stages]
        print(f"| {kind} | {path} | {' | '.join(cells)} |")

    def median_total(kind: str, path: str) -> float:
        return stats(times[(kind, path)]["total"])[0]

    print(
        f"\n12 MP total, new / today: {median_total('12 MP', 'new') / median_total('12 MP', 'today'):.2f}"
        f"; 12 MP new / small new: {median_total('12 MP', 'new') / median_total('small', 'new'):.1f}x"
        f"; 12 MP today / small today:"
        f" {median_total('12 MP', 'today') / median_total('small', 'today'):.1f}x"
    )
    print(
        f"aligned crop, mean abs pixel diff (0-255), median over photos: today vs new"
        f" {np.median(diffs['paths']):.2f}; against aligning the original small photo"
        f" at the same landmarks:"
        f" today {np.median(diffs['today_vs_orig']):.2f}, new {np.median(diffs['new_vs_orig']):.2f}"
    )

    if args.png:
        decode_png, area = [], []
        for o in originals[: args.png]:
            buf = io.BytesIO()
            Image.fromarray(fit(o, *CANVAS)).save(buf, "PNG")
            t0 = time.perf_counter()
            pixels = decode_image(buf.getvalue()).pixels
            t1 = time.perf_counter()
            cv2.resize(pixels, (2000, 1500), interpolation=cv2.INTER_AREA)
            decode_png.append(t1 - t0)
            area.append(time.perf_counter() - t1)
        print(
            f"12 MP PNG (not reduced): decode {stats(decode_png)[0]:.0f} ms; an INTER_AREA"
            f" resize to 2000x1500 would add {stats(area)[0]:.1f} ms (median of {args.png})"
        )


if __name__ == "__main__":
    main()
