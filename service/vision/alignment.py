"""5-point alignment onto a model's template: the one warp used by training and serving.

A template is data (a name, a square crop size and five points in crop pixels) because each
embedder was trained on faces aligned its own way: ArcFace-family models on InsightFace's
112x112 points, Intel's Open Model Zoo re-identification models on their 128x128 points. The
model's contract names its template, so the aligner crops what that model expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TEMPLATE_NAME = "arcface-112-5pt"
ALIGNED_SIZE = 112
# InsightFace's reference points for a 112x112 crop (left eye, right eye, nose, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
# Open Model Zoo's face-reidentification-retail-0095 model card: normalised [0, 1] coordinates
# of the same five points, times the 128 px input side.
OMZ_TEMPLATE_NORMALISED = np.array(
    [
        [0.31556875000000000, 0.4615741071428571],
        [0.68262291666666670, 0.4615741071428571],
        [0.50026249999999990, 0.6405053571428571],
        [0.34947187500000004, 0.8246919642857142],
        [0.65343645833333330, 0.8246919642857142],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Template:
    """Where the five landmarks land in a square `size` x `size` crop (pixel coordinates, in
    the order: eye on the image's left, eye on the image's right, nose tip, left and right
    mouth corners)."""

    name: str
    size: int
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.points) != 5 or any(len(p) != 2 for p in self.points):
            raise ValueError(f"template {self.name!r} needs five (x, y) points")
        if self.size <= 0:
            raise ValueError(f"template {self.name!r} has size {self.size}")

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.points, dtype=np.float64)


def _points(array: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in array)


ARCFACE_112 = Template(TEMPLATE_NAME, ALIGNED_SIZE, _points(ARCFACE_TEMPLATE))
OMZ_128 = Template("omz-128-5pt", 128, _points(OMZ_TEMPLATE_NORMALISED * 128))
TEMPLATES = {t.name: t for t in (ARCFACE_112, OMZ_128)}


def template_named(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown alignment template {name!r}; known: {', '.join(TEMPLATES)}"
        ) from None


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping source to target.

    Umeyama's closed form; returns the 2x3 matrix for cv2.warpAffine. Reflections are excluded,
    so a mirrored landmark set is fitted by a proper rotation rather than flipped.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    if variance <= 0:
        raise ValueError("landmarks are degenerate (all points coincide)")
    scale = (singular * sign).sum() / variance
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, template: Template = ARCFACE_112) -> np.ndarray:
    """The 2x3 matrix that carries the five landmarks onto the template."""
    return similarity_transform(landmarks, template.array)


def align_face(
    image: np.ndarray, landmarks: np.ndarray, template: Template = ARCFACE_112
) -> np.ndarray:
    """Warp an RGB uint8 image so the face's landmarks sit on the template.

    Bilinear sampling and a black border, exactly as InsightFace's `norm_crop`, so models and
    thresholds from that ecosystem see the same pixels. A face more than twice the template's
    size (transform scale under `AREA_BELOW`) would alias under bilinear sampling (each output
    pixel reads 4 of many source pixels), so its surroundings are first shrunk by an integer
    factor with area averaging, leaving a bilinear scale in [0.5, 1]; at scale >= 0.5 the
    output is exactly the plain warp's.
    """
    matrix = alignment_matrix(landmarks, template)
    size = (template.size, template.size)
    factor = _area_factor(matrix)
    if factor > 1:
        reduced = _area_reduced(image, matrix, factor, template.size)
        if reduced is not None:
            image, matrix = reduced
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)


# Below this transform scale, align_face area-averages before warping.
AREA_BELOW = 0.5


def _area_factor(matrix: np.ndarray) -> int:
    """The integer shrink that brings the warp's scale s < AREA_BELOW into [0.5, 1]: floor(1/s),
    so s * factor lies in (1 - s, 1]. 1 when no shrink is needed (or the matrix is not finite)."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not scale < AREA_BELOW or not np.isfinite(scale) or scale <= 0:
        return 1
    return int(min(1.0 / scale, 1e6))


def _area_reduced(
    image: np.ndarray, matrix: np.ndarray, factor: int, size: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The part of `image` the crop reads, shrunk `factor` times by block averaging, and the
    warp matrix for it; None when that part is empty (the crop lies off the image)."""
    # Source points of the crop's corners, and a margin of two reduced pixels for the bilinear
    # neighbours, aligned to the factor's grid so every block is whole.
    inverse = cv2.invertAffineTransform(matrix)
    corners = transform_points(np.array([[0, 0], [size, 0], [0, size], [size, size]]), inverse)
    margin = 2 * factor
    height, width = image.shape[:2]
    low = np.floor((corners.min(axis=0) - margin) / factor) * factor
    high = np.ceil((corners.max(axis=0) + margin) / factor) * factor
    x0, y0 = (max(0, int(v)) for v in np.clip(low, -1, 1 << 30))
    x1, y1 = (int(v) for v in np.clip(high, -1, 1 << 30))
    # Whole blocks only: at the image's edge this drops the last (< factor) rows or columns.
    x1 = x0 + (min(x1, width) - x0) // factor * factor
    y1 = y0 + (min(y1, height) - y0) // factor * factor
    if x1 <= x0 or y1 <= y0:
        return None
    crop = image[y0:y1, x0:x1]
    reduced = cv2.resize(
        crop, ((x1 - x0) // factor, (y1 - y0) // factor), interpolation=cv2.INTER_AREA
    )
    # Reduced pixel u covers source pixels x0 + factor*u ... + factor-1, centred on
    # x0 + factor*u + (factor-1)/2: compose that map with the original warp.
    offset = np.array([x0, y0], dtype=np.float64) + (factor - 1) / 2
    shrunk = np.empty((2, 3))
    shrunk[:, :2] = matrix[:, :2] * factor
    shrunk[:, 2] = matrix[:, :2] @ offset + matrix[:, 2]
    return reduced, shrunk


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
