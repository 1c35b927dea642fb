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
    thresholds from that ecosystem see the same pixels.
    """
    matrix = alignment_matrix(landmarks, template)
    size = (template.size, template.size)
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
