"""SCRFD face detection on onnxruntime, without torch.

Runs the ONNX files InsightFace distributes as `det_*.onnx` / `scrfd_*.onnx`: one input
(1, 3, H, W) normalised as (x - 127.5) / 128 in RGB, and for each stride (8, 16, 32, and for
some files 64 and 128) three outputs with one row per anchor: a sigmoid score (last dim 1),
four box distances (last dim 4) and five keypoints as offsets (last dim 10), the distances in
units of the stride. Decoding follows InsightFace's reference `SCRFD` class to reproduce
the reference's detections; the differences are that the outputs are identified
by shape rather than by position, and that the x and y resize scales are inverted separately.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from service.vision.detection import Face, check_image, faces_at, nms, no_candidates

log = logging.getLogger(__name__)

_SCORE_DIM, _BOX_DIM, _KPS_DIM = 1, 4, 10


@dataclass(frozen=True)
class _Level:
    """The three outputs of one stride, by output name."""

    stride: int
    score: str
    box: str
    kps: str


def _last_dim(shape: list[int | str | None]) -> int | None:
    last = shape[-1] if shape else None
    return last if isinstance(last, int) else None


def _classify_outputs(outputs: list[ort.NodeArg]) -> tuple[list[str], list[str], list[str]]:
    """Split output names into score, box and keypoint groups by their last dimension."""
    groups: dict[int, list[str]] = {_SCORE_DIM: [], _BOX_DIM: [], _KPS_DIM: []}
    for output in outputs:
        dim = _last_dim(output.shape)
        if dim not in groups:
            raise ValueError(
                f"unexpected output {output.name!r} with shape {output.shape}: an SCRFD file "
                "has only score (…, 1), box (…, 4) and keypoint (…, 10) outputs"
            )
        groups[dim].append(output.name)
    scores, boxes, kps = groups[_SCORE_DIM], groups[_BOX_DIM], groups[_KPS_DIM]
    if not kps:
        raise ValueError(
            "this detector file has no keypoint outputs; five landmarks are needed to align "
            "faces, so use an SCRFD file exported with keypoints (the `_kps` / `det_*` kind)"
        )
    if not scores or not (len(scores) == len(boxes) == len(kps)):
        raise ValueError(
            f"expected as many score, box and keypoint outputs, got {len(scores)}, "
            f"{len(boxes)} and {len(kps)}"
        )
    return scores, boxes, kps


def _rows(array: np.ndarray) -> np.ndarray:
    """Drop a leading batch dimension of 1, which some exports keep, leaving (anchors, dim)."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"detector output has shape {array.shape}; expected (anchors, dim)")
    return array


def _levels_by_rows(
    names: tuple[list[str], list[str], list[str]], arrays: dict[str, np.ndarray]
) -> list[_Level]:
    """Pair outputs into strides: the finest stride has the most anchors, so sort by rows.

    Sorting on the actual arrays rather than the declared shapes works for files whose
    anchor counts are symbolic because the input size is dynamic.
    """
    ordered = [sorted(group, key=lambda n: -len(arrays[n])) for group in names]
    levels = []
    for i, (score, box, kps) in enumerate(zip(*ordered, strict=True)):
        if not (len(arrays[score]) == len(arrays[box]) == len(arrays[kps])):
            raise ValueError("score, box and keypoint outputs of one stride differ in rows")
        levels.append(_Level(stride=8 * 2**i, score=score, box=box, kps=kps))
    return levels


def _anchor_centres(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """(height * width * num_anchors, 2) x, y pixel centres, row-major, anchors innermost."""
    centres = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    centres = (centres * stride).reshape(-1, 2)
    if num_anchors > 1:
        centres = np.repeat(centres, num_anchors, axis=0)
    centres.setflags(write=False)
    return centres


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) from centres (N, 2) and left, top, right, bottom distances (N, 4)."""
    return np.concatenate([points - distance[:, :2], points + distance[:, 2:]], axis=1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints (N, K, 2) from centres (N, 2) and per-point x, y offsets (N, 2K)."""
    return points[:, None, :] + distance.reshape(len(distance), -1, 2)


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """Resize keeping the aspect ratio into the top-left of a zero canvas.

    `input_size` is (width, height), InsightFace's order. Returns the canvas and the x and
    y scales from image to canvas pixels; they differ slightly because the resized size is
    rounded down, and inverting each separately keeps the rounding out of the coordinates.
    """
    in_w, in_h = input_size
    height, width = image.shape[:2]
    if height / width > in_h / in_w:
        new_h, new_w = in_h, max(1, int(in_h * width / height))
    else:
        new_w, new_h = in_w, max(1, int(in_w * height / width))
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
    return canvas, new_w / width, new_h / height


def adaptive_input_size(
    shape: tuple[int, int], stride: int, shortest: int = 320, longest: int = 640
) -> tuple[int, int]:
    """(width, height) for a dynamic-input file: the longer side scaled into [shortest,
    longest], then each side rounded up to the stride so padding stays under one stride."""
    height, width = shape
    scale = min(max(1.0, shortest / max(height, width)), longest / max(height, width))
    return (
        max(stride, -(-round(width * scale) // stride) * stride),
        max(stride, -(-round(height * scale) // stride) * stride),
    )


def _to_blob(canvas: np.ndarray) -> np.ndarray:
    """HWC RGB uint8 to the (1, 3, H, W) float32 the network was trained on."""
    blob = (canvas.astype(np.float32) - 127.5) / 128.0
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


class ScrfdDetector:
    """SCRFD detector; `detect` returns faces with five landmarks, best score first.

    `input_size` is (width, height), each a multiple of 32 (the coarsest stride): the image is
    scaled to fill it, as InsightFace does. A file whose input size is fixed overrides it.
    Left at None (the default, for files with a dynamic input), the image is scaled so its
    longer side lands between 320 and 640 pixels and padded only to the stride. `min_face_size` drops faces whose shorter box
    side, in original image pixels, is below it. `threads` > 0 caps onnxruntime's intra-op
    threads (0 lets onnxruntime choose).

    Why not InsightFace's fixed 640x640 fill: a small face crop is then blown up until the
    face spans ~450 px, and scrfd_500m misses most faces that large (on the project's 112 px
    loose crops it finds 2-93% per source at 640, about 100% at 160-320). Large photos still
    go down to 640, where faces of a group photo stay findable.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_size: tuple[int, int] | None = None,
        min_face_size: int = 0,
        threads: int = 0,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"detector model not found: {model_path}")
        options = ort.SessionOptions()
        # InsightFace's files declare the anchor counts of a 640x640 input even where the
        # input is dynamic, so onnxruntime would warn on every run at any other size.
        options.log_severity_level = 3
        options.enable_mem_pattern = False  # an input shape per photo (as for YuNet)
        if threads > 0:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{model_path.name}: expected one (1, 3, H, W) input")
        self._input_name = inputs[0].name
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._groups = _classify_outputs(self._session.get_outputs())

        fixed_h, fixed_w = inputs[0].shape[2:]
        if isinstance(fixed_h, int) and isinstance(fixed_w, int):
            if input_size is not None and (fixed_w, fixed_h) != tuple(input_size):
                log.warning(
                    "%s has a fixed %dx%d input; ignoring input_size=%s",
                    model_path.name,
                    fixed_w,
                    fixed_h,
                    input_size,
                )
            input_size = (fixed_w, fixed_h)
        self._coarsest = 8 * 2 ** (len(self._groups[0]) - 1)
        if input_size is not None and any(
            side <= 0 or side % self._coarsest for side in input_size
        ):
            raise ValueError(
                f"input_size {input_size} must be positive multiples of {self._coarsest}"
            )

        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.min_face_size = int(min_face_size)
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _centres_for(self, height: int, width: int, stride: int, rows: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:
            # The anchor count per location is read off the output rather than assumed,
            # so files with one anchor per location decode as well as the usual two.
            cells = height * width
            if rows % cells:
                raise ValueError(f"stride {stride}: {rows} rows do not tile a {height}x{width} map")
            self._centres[key] = _anchor_centres(height, width, stride, rows // cells)
        return self._centres[key]

    def _decode(
        self, arrays: dict[str, np.ndarray], in_w: int, in_h: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and keypoints above the score threshold, in network-input pixels."""
        boxes, scores, kps = [], [], []
        for level in _levels_by_rows(self._groups, arrays):
            level_scores = arrays[level.score][:, 0]
            # Thresholding before decoding keeps the work proportional to the candidates.
            keep = np.flatnonzero(level_scores >= self.score_threshold)
            if keep.size == 0:
                continue
            centres = self._centres_for(
                in_h // level.stride, in_w // level.stride, level.stride, len(level_scores)
            )[keep]
            boxes.append(distance2bbox(centres, arrays[level.box][keep] * level.stride))
            kps.append(distance2kps(centres, arrays[level.kps][keep] * level.stride))
            scores.append(level_scores[keep])
        if not scores:
            return no_candidates()
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 (H, W, 3) image, in its pixel coordinates, best score first."""
        check_image(image)
        image = np.ascontiguousarray(image)
        size = self.input_size or adaptive_input_size(image.shape[:2], self._coarsest)
        canvas, scale_x, scale_y = letterbox(image, size)
        outputs = self._session.run(self._output_names, {self._input_name: _to_blob(canvas)})
        arrays = {name: _rows(out) for name, out in zip(self._output_names, outputs, strict=True)}
        boxes, scores, kps = self._decode(arrays, *size)

        boxes = boxes / np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        kps = kps / np.array([scale_x, scale_y], dtype=np.float32)
        if self.min_face_size > 0:
            # Filter before NMS so a too-small box can never suppress an acceptable one.
            sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            big = sides >= self.min_face_size
            boxes, scores, kps = boxes[big], scores[big], kps[big]
        keep = nms(boxes, scores, self.nms_threshold)
        return faces_at(keep, boxes, scores, kps)
