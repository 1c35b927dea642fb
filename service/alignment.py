"""5-point alignment to the ArcFace 112x112 template: the one warp used by training and serving."""

from __future__ import annotations

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


def alignment_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The 2x3 matrix that carries the five landmarks onto the template scaled to `size`."""
    return similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / ALIGNED_SIZE))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp an RGB uint8 image so the face's landmarks sit on the ArcFace template.

    Bilinear sampling and a black border, exactly as InsightFace's `norm_crop`, so models and
    thresholds from that ecosystem see the same pixels.
    """
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]
