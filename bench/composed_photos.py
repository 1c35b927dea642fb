"""Photos for timing detection, composed from real 112x112 loose face crops: one crop as it
is, or one to three crops upscaled and pasted with feathered edges onto a blurred mosaic of
*other* people's patches (photo colours and JPEG entropy, no face layout of its own), so the
detectors get no free false positives and every placed face's region is known."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FACE_GLOB = "val/cfp/Data/Images/*/frontal/01.jpg"
BACKGROUND_GLOB = "val/cfp/Data/Images/*/frontal/0[2-9].jpg"
JPEG_QUALITY = 90
# The data README: the face fills about 70% of the side of a loose crop.
FACE_FILL = 0.7
# Long side -> (faces placed, face side as a fraction of the long side). Fewer, larger faces
# on small images (a portrait or selfie); more, relatively smaller ones on big photos.
LAYOUT: dict[int, tuple[int, float]] = {320: (1, 1 / 3), 640: (2, 1 / 4), 1280: (3, 1 / 5)}
LARGE_LAYOUT = (3, 1 / 6)


@dataclass(frozen=True)
class TestImage:
    size: int
    pixels: np.ndarray  # (H, W, 3) uint8 RGB as built, before JPEG
    jpeg: bytes
    faces: list[tuple[float, float, float, float]]  # placed face regions x1, y1, x2, y2
    description: str


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _background(
    height: int, width: int, sources: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Shuffled, flipped quarter-crop patches, blurred: photo colours, no face layout."""
    patch = 28
    cell = max(8, max(height, width) // 12)
    rows, cols = -(-height // cell), -(-width // cell)
    mosaic = np.empty((rows * cell, cols * cell, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            src = sources[rng.integers(len(sources))]
            y, x = (
                rng.integers(0, src.shape[0] - patch + 1),
                rng.integers(0, src.shape[1] - patch + 1),
            )
            tile = src[y : y + patch, x : x + patch]
            # Random flips so that no eye/mouth pair survives in its natural arrangement.
            tile = tile[:: rng.choice((-1, 1)), :: rng.choice((-1, 1))]
            mosaic[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = cv2.resize(
                tile, (cell, cell), interpolation=cv2.INTER_LINEAR
            )
    mosaic = mosaic[:height, :width]
    return cv2.GaussianBlur(mosaic, (0, 0), sigmaX=cell / 3)


def _feather_mask(side: int) -> np.ndarray:
    """Alpha 1 in the middle, ramping to 0 over the outer 12%: the face (central 70%) is
    untouched while the crop's square edge, which no real photo has, disappears."""
    ramp = max(1, round(side * 0.12))
    axis = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float32)
    axis = np.clip((axis + 0.5) / ramp, 0.0, 1.0)
    return np.minimum(axis[:, None], axis[None, :])[..., None]


def _face_region(x: float, y: float, side: float) -> tuple[float, float, float, float]:
    margin = side * (1 - FACE_FILL) / 2
    return (x + margin, y + margin, x + side - margin, y + side - margin)


def _encode(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def build_image(
    size: int, faces: list[np.ndarray], sources: list[np.ndarray], rng: np.random.Generator
) -> TestImage:
    if size <= faces[0].shape[0]:
        crop = faces[0]
        region = _face_region(0, 0, crop.shape[0])
        return TestImage(size, crop, _encode(crop), [region], "one 112x112 loose crop, as is")

    count, fraction = LAYOUT.get(size, LARGE_LAYOUT)
    width, height = size, round(size * 3 / 4)
    canvas = _background(height, width, sources, rng).astype(np.float32)
    side = round(size * fraction / FACE_FILL)
    mask = _feather_mask(side)
    column = width / count
    regions = []
    for k in range(count):
        crop = cv2.resize(faces[k % len(faces)], (side, side), interpolation=cv2.INTER_CUBIC)
        # Jitter within the column so faces are not on a grid; the columns keep them apart.
        slack_x = max(0.0, column - side)
        x = round(k * column + rng.uniform(0.2, 0.8) * slack_x)
        y = round(rng.uniform(0.25, 0.6) * (height - side))
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = region * (1 - mask) + crop * mask
        regions.append(_face_region(x, y, side))
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    face_px = round(side * FACE_FILL)
    description = (
        f"{width}x{height}, {count} face(s) of ~{face_px} px (crop upscaled to {side} px) "
        "on a blurred patch background"
    )
    return TestImage(size, pixels, _encode(pixels), regions, description)


def build_images(data: Path, sizes: list[int], seed: int) -> list[TestImage]:
    face_paths = sorted(data.glob(FACE_GLOB))
    background_paths = sorted(data.glob(BACKGROUND_GLOB))
    if not face_paths or not background_paths:
        raise SystemExit(f"no face crops under {data} matching {FACE_GLOB}; see --data")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(face_paths), size=min(3, len(face_paths)), replace=False)
    faces = [_load_rgb(face_paths[i]) for i in picks]
    # Backgrounds come from other people's photos, so no patch is part of a placed face.
    chosen = {face_paths[i].parent.parent for i in picks}
    pool = [p for p in background_paths if p.parent.parent not in chosen]
    sources = [_load_rgb(pool[i]) for i in rng.choice(len(pool), size=min(64, len(pool)))]
    return [build_image(size, faces, sources, rng) for size in sizes]
