"""MTCNN face detection on ONNX Runtime (no torch): three cascaded nets, five landmarks.

Follows the pipeline of facenet-pytorch 2.6.0 (image pyramid, PNet proposals, RNet and ONet
refinement, the same thresholds and NMS steps) with one deliberate change: crops that run past
the image border are zero-padded, as in the original MTCNN, instead of clipped. Clipping
squeezes a border face into a distorted 24x24/48x48 crop and biases its landmarks, and our
training data (loose crops) puts many faces near the border.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from service.vision.detection import Face, nms

_CELL = 12  # PNet's receptive field
_STRIDE = 2  # PNet's output stride


@dataclass(frozen=True)
class MtcnnConfig:
    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    scale_factor: float = 0.709
    # Large photos are shrunk for detection only (landmarks are mapped back to full resolution):
    # PNet's pyramid cost grows with the pixel count (~0.45 s per core at 1600 px), while a
    # face that is under ~20 px after shrinking to 1024 is too small to recognise anyway.
    max_side: int = 1024


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # The pyramid's scales and the candidate counts make a new input shape per photo; a
    # memory plan per shape only grows (as for YuNet and the embedder).
    options.enable_mem_pattern = False
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _normalise(batch_hwc: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) in [-1, 1], as MTCNN was trained."""
    return ((batch_hwc.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy()


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the crop nets take square inputs)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool) -> np.ndarray:
    extra = 1.0 if inclusive else 0.0
    w = (boxes[:, 2] - boxes[:, 0] + extra)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + extra)[:, None]
    out = boxes.copy()
    out[:, 0:4] = boxes[:, 0:4] + offsets * np.concatenate([w, h, w, h], axis=1)
    return out


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut each box (1-based inclusive pixel coordinates, MTCNN's convention) with zero padding."""
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for k, box in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2], box[3]
        patch = np.zeros((max(y1 - y0, 1), max(x1 - x0, 1), 3), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


class MtcnnDetector:
    """Detector over mtcnn_{pnet,rnet,onet}.onnx in `model_dir`."""

    def __init__(
        self, model_dir: str | Path, config: MtcnnConfig | None = None, *, threads: int = 0
    ) -> None:
        model_dir = Path(model_dir)
        self.config = config or MtcnnConfig()
        self._pnet = _session(model_dir / "mtcnn_pnet.onnx", threads)
        self._rnet = _session(model_dir / "mtcnn_rnet.onnx", threads)
        self._onet = _session(model_dir / "mtcnn_onet.onnx", threads)

    def detect(self, image: np.ndarray) -> list[Face]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}"
            )
        shrink = min(1.0, self.config.max_side / max(image.shape[:2]))
        small = image
        if shrink < 1.0:
            size = (round(image.shape[1] * shrink), round(image.shape[0] * shrink))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        boxes = self._propose(small)
        if len(boxes):
            boxes = self._refine(small, boxes)
        if not len(boxes):
            return []
        boxes, points = self._output(small, boxes)
        boxes[:, :4] /= shrink
        points /= shrink
        return [
            Face(box=b[:4].astype(np.float32), score=float(b[4]), landmarks=p.astype(np.float32))
            for b, p in zip(boxes, points, strict=True)
        ]

    def _scales(self, height: int, width: int) -> list[float]:
        scale = _CELL / self.config.min_face_size
        side = min(height, width) * scale
        scales: list[float] = []
        while side >= _CELL:
            scales.append(scale)
            scale *= self.config.scale_factor
            side *= self.config.scale_factor
        return scales

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """PNet over the pyramid: rows (x1, y1, x2, y2, score) squared and regressed."""
        height, width = image.shape[:2]
        found: list[np.ndarray] = []
        for scale in self._scales(height, width):
            size = (int(width * scale + 1), int(height * scale + 1))
            scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            regression, probability = self._pnet.run(None, {"input": _normalise(scaled[None])})
            score_map = probability[0, 1]
            ys, xs = np.nonzero(score_map >= self.config.thresholds[0])
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float32)
            q1 = np.floor((_STRIDE * cells + 1) / scale)
            q2 = np.floor((_STRIDE * cells + _CELL) / scale)
            offsets = regression[0][:, ys, xs].T
            rows = np.concatenate([q1, q2, score_map[ys, xs][:, None], offsets], axis=1)
            found.append(rows[nms(rows[:, :4], rows[:, 4], 0.5)])
        if not found:
            return np.empty((0, 5), dtype=np.float32)
        rows = np.concatenate(found)
        rows = rows[nms(rows[:, :4], rows[:, 4], 0.7)]
        boxes = _regress(rows[:, :5], rows[:, 5:9], inclusive=False)
        return _square(boxes)

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        regression, probability = self._rnet.run(
            None, {"input": _normalise(_crops(image, boxes, 24))}
        )
        keep = probability[:, 1] > self.config.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], probability[keep, 1:2]], axis=1)
        regression = regression[keep]
        picked = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[picked], regression[picked], inclusive=True))

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regression, landmarks, probability = self._onet.run(
            None, {"input": _normalise(_crops(image, boxes, 48))}
        )
        keep = probability[:, 1] > self.config.thresholds[2]
        boxes = np.concatenate([boxes[keep, :4], probability[keep, 1:2]], axis=1)
        regression, landmarks = regression[keep], landmarks[keep]
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        # ONet answers in 1-based crop-relative units; "- 1" brings points to 0-based pixels.
        xs = w * landmarks[:, :5] + boxes[:, 0:1] - 1
        ys = h * landmarks[:, 5:] + boxes[:, 1:2] - 1
        points = np.stack([xs, ys], axis=2)
        boxes = _regress(boxes, regression, inclusive=True)
        boxes[:, :4] -= 1
        picked = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return boxes[picked], points[picked]
