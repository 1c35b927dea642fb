"""The detector interface, the face record every detector returns, and face-selection policies."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    `landmarks` are five (x, y) points in the order of the ArcFace template: the eye on the
    image's left, the eye on the image's right, nose tip, left mouth corner, right mouth corner.
    """

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) float32

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2


def no_candidates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (0, 4), scores (0,) and landmarks (0, 5, 2): a decoder's answer when nothing
    passed its score threshold."""
    return np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, 5, 2), np.float32)


def faces_at(
    keep: np.ndarray, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray
) -> list[Face]:
    """The kept candidates (x1, y1, x2, y2 boxes, image pixels) as faces, in `keep`'s order."""
    return [
        Face(
            box=boxes[i].astype(np.float32),
            score=float(scores[i]),
            landmarks=landmarks[i].astype(np.float32),
        )
        for i in keep
    ]


class Detector(Protocol):
    """Anything that turns an RGB uint8 image (H, W, 3) into faces, best score first."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


class FacePolicy(StrEnum):
    """Which face(s) to use when an image holds several."""

    largest = "largest"
    central = "central"
    # The largest face when it clearly dominates (DOMINANCE_AREA_RATIO); otherwise every face,
    # and a request refuses the photo as ambiguous (422 multiple_faces, naming the faces).
    dominant = "dominant"
    single = "single"  # exactly one face: a request refuses a photo with several (422)
    all = "all"


# A face dominates a photo when its box has at least twice the area of every other face's
# (its side is over 1.41 times theirs): a person in front of a crowd, a passer-by in the
# background. Two people of about the same size are an ambiguity only the client can settle.
DOMINANCE_AREA_RATIO = 2.0


def select_faces(faces: list[Face], policy: FacePolicy, image_shape: tuple[int, ...]) -> list[Face]:
    """Apply a selection policy; `all` and `single` keep every face, largest first, and so
    does `dominant` when no face dominates (the refusal of several is the caller's)."""
    if not faces:
        return []
    if policy in (FacePolicy.all, FacePolicy.single, FacePolicy.dominant):
        ordered = sorted(faces, key=lambda f: f.area, reverse=True)
        if policy is FacePolicy.dominant and (
            len(ordered) == 1 or ordered[0].area >= DOMINANCE_AREA_RATIO * ordered[1].area
        ):
            return ordered[:1]
        return ordered
    if policy is FacePolicy.largest:
        return [max(faces, key=lambda f: f.area)]
    height, width = image_shape[:2]
    cx, cy = width / 2, height / 2

    def off_centre(face: Face) -> float:
        fx, fy = face.center
        return (fx - cx) ** 2 + (fy - cy) ** 2

    return [min(faces, key=off_centre)]


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, mode: str = "union"
) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    `mode="min"` divides the overlap by the smaller box (MTCNN's last stage uses it so a box
    nested inside a larger one is suppressed).
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(areas[i], areas[rest]), 1e-9)
        else:
            overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def check_image(image: np.ndarray) -> None:
    """What every detector accepts: an RGB uint8 (H, W, 3) array with pixels."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
