"""YuNet face detection (OpenCV Zoo, 2023mar) on onnxruntime, without torch or OpenCV's DNN.

Runs `models/yunet.onnx`, which `facemargin export yunet` makes from OpenCV Zoo's
`face_detection_yunet_2023mar.onnx` (MIT licence) by declaring its input (1, 3, height,
width): the graph itself works at any size whose sides are multiples of 32. The network takes
BGR pixels as float 0-255, NCHW, and has, for each stride s in 8, 16 and 32, four outputs
with one row per cell of the (H/s, W/s) grid, row-major: `cls_s` and `obj_s` (1, N, 1),
`bbox_s` (1, N, 4) and `kps_s` (1, N, 10).

Decoding reproduces OpenCV's `cv::FaceDetectorYN` for this model: for cell (r, c) the score is
sqrt(clip(cls, 0, 1) * clip(obj, 0, 1)); the box centre is ((c + bbox0) * s, (r + bbox1) * s),
its size (exp(bbox2) * s, exp(bbox3) * s); landmark n is ((kps[2n] + c) * s, (kps[2n+1] + r) *
s). NMS, as OpenCV's, compares the boxes truncated to whole network-input pixels. The image is
padded bottom/right with zeros to multiples of 32, as OpenCV does, so at the same input size
the faces match `cv2.FaceDetectorYN` (tests/service/test_yunet.py checks this).

YuNet emits the landmarks as: the subject's right eye (the image's left), the subject's left
eye, nose tip, the subject's right mouth corner (image left), left mouth corner: already the
order of `Face.landmarks`, so no reordering is needed (checked on frontal photos in the tests).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from service.vision.detection import Face, check_image, faces_at, nms, no_candidates

STRIDES = (8, 16, 32)
_DIVISOR = 32
_NUM_LANDMARKS = 5


def scaled_size(
    height: int, width: int, max_side: int = 640, min_side: int = 224
) -> tuple[int, int]:
    """(width, height) the image is resized to before padding: the long side brought down to
    `max_side` if above it, or up to `min_side` if below it; otherwise the image's own size."""
    long_side = max(height, width)
    if long_side > max_side:
        scale = max_side / long_side
    elif long_side < min_side:
        scale = min_side / long_side
    else:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def padded(side: int) -> int:
    """`side` rounded up to a multiple of 32, as OpenCV's FaceDetectorYN pads."""
    return -(-side // _DIVISOR) * _DIVISOR


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` at (width, height). A large shrink first averages whole k x k blocks (INTER_AREA
    at an integer factor, OpenCV's fast path: 6 ms for 4000x3000 against 15-30 ms at the
    exact size), so the last, bilinear step shrinks by less than 2 and does not alias."""
    factor = min(image.shape[1] // width, image.shape[0] // height)
    if factor >= 2:
        image = cv2.resize(image, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image


def _cells(rows: int, cols: int) -> np.ndarray:
    """(rows * cols, 2) float32 column, row indices of a grid, row-major."""
    grid = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).reshape(-1, 2).astype(np.float32)
    grid.setflags(write=False)
    return grid


class YunetDetector:
    """YuNet detector; `detect` returns faces with five landmarks, best score first.

    Input size follows the photo: an image whose long side exceeds `max_side` is scaled down
    to it, one whose long side is below `min_side` is scaled up to it, and any other runs at
    its own size; each is then padded bottom/right to multiples of 32. When no face reaches
    `score_threshold`, faces down to `fallback_threshold` (if set) are returned instead: the
    same network run, decoded lower, wins back profile faces YuNet is unsure of without adding
    doubtful second faces to photos that have a clear one. `min_face_size` drops
    faces whose shorter box side, in original image pixels, is below it. `threads` > 0 caps
    onnxruntime's intra-op threads (0 lets onnxruntime choose).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        score_threshold: float = 0.5,
        fallback_threshold: float | None = None,
        nms_threshold: float = 0.3,
        max_side: int = 640,
        min_side: int = 224,
        min_face_size: int = 0,
        threads: int = 0,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"detector model not found: {model_path}")
        if max_side < _DIVISOR or min_side < 0 or min_side > max_side:
            raise ValueError(
                f"need 32 <= max_side and 0 <= min_side <= max_side, got {max_side}, {min_side}"
            )
        options = ort.SessionOptions()
        # Every photo's aspect gives another input shape; a memory plan per shape only grows.
        options.enable_mem_pattern = False
        if threads > 0:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{model_path.name}: expected one (1, 3, H, W) input")
        if any(isinstance(side, int) for side in inputs[0].shape[2:]):
            raise ValueError(
                f"{model_path.name} declares a fixed input size {inputs[0].shape}; convert it "
                "with `facemargin export yunet SOURCE OUT` so it runs at the photo's size"
            )
        self._input_name = inputs[0].name
        names = {o.name for o in self._session.get_outputs()}
        self._output_names = [
            f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES
        ]
        missing = [name for name in self._output_names if name not in names]
        if missing:
            raise ValueError(f"{model_path.name} is not a YuNet file: no outputs {missing}")

        self.score_threshold = float(score_threshold)
        self.fallback_threshold = fallback_threshold
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        self.min_face_size = int(min_face_size)
        self._grids: dict[tuple[int, int], np.ndarray] = {}

    @property
    def _floor(self) -> float:
        """The lowest score decoded: the fallback's when there is one."""
        if self.fallback_threshold is None:
            return self.score_threshold
        return min(self.score_threshold, self.fallback_threshold)

    def _grid(self, rows: int, cols: int) -> np.ndarray:
        key = (rows, cols)
        if key not in self._grids:
            self._grids[key] = _cells(rows, cols)
        return self._grids[key]

    def _blob(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """RGB image to the zero-padded (1, 3, H32, W32) BGR float 0-255 network input."""
        image = _resize(image, width, height)
        blob = np.zeros((1, 3, padded(height), padded(width)), dtype=np.float32)
        blob[0, :, :height, :width] = image[:, :, ::-1].transpose(2, 0, 1)
        return blob

    def _decode(
        self, outputs: dict[str, np.ndarray], pad_h: int, pad_w: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (x1, y1, w, h), scores and landmarks at or above the score threshold, in
        network-input pixels, stride 8 first and row-major within a stride (OpenCV's order)."""
        boxes, scores, landmarks = [], [], []
        for stride in STRIDES:
            cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
            obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
            level_scores = np.sqrt(cls * obj)
            # Thresholding before decoding keeps the work proportional to the candidates.
            keep = np.flatnonzero(level_scores >= self._floor)
            if keep.size == 0:
                continue
            cells = self._grid(pad_h // stride, pad_w // stride)[keep]
            bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
            kps = outputs[f"kps_{stride}"].reshape(-1, _NUM_LANDMARKS, 2)[keep]
            step = np.float32(stride)
            centre = (cells + bbox[:, :2]) * step
            size = np.exp(bbox[:, 2:]) * step
            boxes.append(np.concatenate([centre - size / np.float32(2), size], axis=1))
            landmarks.append((kps + cells[:, None, :]) * step)
            scores.append(level_scores[keep])
        if not scores:
            return no_candidates()
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 (H, W, 3) image, in its pixel coordinates, best score first."""
        check_image(image)
        height, width = image.shape[:2]
        in_w, in_h = scaled_size(height, width, self.max_side, self.min_side)
        blob = self._blob(image, in_w, in_h)
        arrays = self._session.run(self._output_names, {self._input_name: blob})
        outputs = dict(zip(self._output_names, arrays, strict=True))
        boxes, scores, landmarks = self._decode(outputs, blob.shape[2], blob.shape[3])
        confident = scores >= self.score_threshold
        if confident.any():
            boxes, scores, landmarks = boxes[confident], scores[confident], landmarks[confident]

        scale = np.array([in_w / width, in_h / height], dtype=np.float32)
        if self.min_face_size > 0 and len(boxes):
            # Filter before NMS so a too-small box can never suppress an acceptable one.
            big = (boxes[:, 2:] / scale).min(axis=1) >= self.min_face_size
            boxes, scores, landmarks = boxes[big], scores[big], landmarks[big]
        # OpenCV suppresses on (x, y, w, h) truncated to int; so do we, to keep its faces.
        whole = np.trunc(boxes)
        keep = nms(
            np.concatenate([whole[:, :2], whole[:, :2] + whole[:, 2:]], 1),
            scores,
            self.nms_threshold,
        )
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) / np.tile(scale, 2)
        landmarks = landmarks / scale
        return faces_at(keep, boxes, scores, landmarks)
