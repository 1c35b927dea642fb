"""ScrfdDetector on the real SCRFD-500m file and real face photos, plus synthetic ONNX graphs
whose outputs are known exactly, to pin down decoding, output identification and letterboxing.

The model and the photos are research-licensed and live beside the repository, never in it;
every test here is skipped when they are absent.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from service.vision.detection import Face
from service.vision.scrfd import ScrfdDetector, adaptive_input_size
from tests.conftest import SHARED, load_rgb, sample_photos

MODEL = SHARED / "models" / "scrfd_500m.onnx"

if not MODEL.is_file():
    pytest.skip(f"SCRFD test model not found at {MODEL}", allow_module_level=True)

# The photos are 112 px loose crops. Letterboxed into 640 the face becomes ~450 px and fills
# the frame, where scrfd_500m misses most faces; at 320 it is ~220 px and found reliably.
CROP_INPUT = (320, 320)


@pytest.fixture(scope="module")
def detector() -> ScrfdDetector:
    """The service default: adaptive input size (longer side into 320..640)."""
    return ScrfdDetector(MODEL)


@pytest.fixture(scope="module")
def crop_detector() -> ScrfdDetector:
    return ScrfdDetector(MODEL, input_size=CROP_INPUT)


@pytest.fixture(scope="module")
def sample() -> list[tuple[Path, np.ndarray]]:
    return [(path, load_rgb(path)) for path in sample_photos()]


@pytest.fixture(scope="module")
def photo(sample: list[tuple[Path, np.ndarray]]) -> np.ndarray:
    return sample[0][1]


@pytest.fixture(scope="module")
def other_photo(sample: list[tuple[Path, np.ndarray]]) -> np.ndarray:
    return sample[-1][1]


def _main_face(faces: list[Face]) -> Face:
    assert faces, "no face detected"
    return max(faces, key=lambda f: f.area)


def _grey_canvas(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 127, dtype=np.uint8)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    canvas[y : y + image.shape[0], x : x + image.shape[1]] = image


# --- real photos ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["detector", "crop_detector"])
def test_yield_and_landmark_sanity(
    which: str, request: pytest.FixtureRequest, sample: list[tuple[Path, np.ndarray]]
) -> None:
    detected = 0
    for path, image in sample:
        faces = request.getfixturevalue(which).detect(image)
        if not faces:
            continue
        detected += 1
        face = _main_face(faces)
        left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
        x1, y1, x2, y2 = face.box
        width, height = face.width, face.height
        assert face.box.dtype == np.float32 and face.box.shape == (4,), path
        assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2), path
        assert left_eye[1] < nose[1] and right_eye[1] < nose[1], path
        assert nose[1] < left_mouth[1] and nose[1] < right_mouth[1], path
        assert left_eye[0] < right_eye[0], path
        assert left_mouth[0] < right_mouth[0], path
        inter_ocular = float(np.linalg.norm(right_eye - left_eye))
        assert 0.25 * width < inter_ocular < 0.7 * width, (path, inter_ocular, width)
        slack_x, slack_y = 0.1 * width, 0.1 * height
        assert np.all(face.landmarks[:, 0] > x1 - slack_x), path
        assert np.all(face.landmarks[:, 0] < x2 + slack_x), path
        assert np.all(face.landmarks[:, 1] > y1 - slack_y), path
        assert np.all(face.landmarks[:, 1] < y2 + slack_y), path
        # The crops were cut 1.45x around a detector box: the face is centred and large.
        image_h, image_w = image.shape[:2]
        cx, cy = face.center
        assert abs(cx - image_w / 2) < 0.15 * image_w, (path, face.box)
        assert abs(cy - image_h / 2) < 0.15 * image_h, (path, face.box)
        assert 0.3 * image_w < width < 0.95 * image_w, (path, face.box)
    face_yield = detected / len(sample)
    print(f"SCRFD yield on {len(sample)} photos at {CROP_INPUT}: {face_yield:.1%}")
    assert face_yield >= 0.9


def test_faces_come_best_score_first(photo: np.ndarray, other_photo: np.ndarray) -> None:
    # A low threshold keeps several candidates, so the order is actually exercised.
    faces = ScrfdDetector(MODEL, input_size=CROP_INPUT, score_threshold=0.05).detect(
        np.hstack([photo, other_photo])
    )
    scores = [f.score for f in faces]
    assert len(scores) >= 2
    assert scores == sorted(scores, reverse=True)
    assert all(0.05 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("factor", [3, 8])
def test_upscaled_photo_gives_scaled_coordinates(
    crop_detector: ScrfdDetector, photo: np.ndarray, factor: int
) -> None:
    # 112 px is enlarged to fill the input, 336 and 896 px are shrunk: both directions of
    # the resize must be undone to land on the same face.
    small = _main_face(crop_detector.detect(photo))
    big_image = cv2.resize(photo, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    big = _main_face(crop_detector.detect(big_image))
    tolerance = 0.02 * small.width
    np.testing.assert_allclose(big.box / factor, small.box, atol=tolerance)
    np.testing.assert_allclose(big.landmarks / factor, small.landmarks, atol=tolerance)


@pytest.mark.parametrize(
    ("canvas_w", "canvas_h", "x", "y"),
    [(640, 300, 421, 150), (300, 640, 150, 437), (1280, 600, 803, 341)],
)
def test_non_square_image_keeps_offsets(
    detector: ScrfdDetector,
    crop_detector: ScrfdDetector,
    photo: np.ndarray,
    canvas_w: int,
    canvas_h: int,
    x: int,
    y: int,
) -> None:
    alone = _main_face(crop_detector.detect(photo))
    canvas = _grey_canvas(canvas_w, canvas_h)
    # Enlarged so the face keeps a detectable size after the 1280 px canvas is halved.
    scale = 2 if canvas_w > 640 else 1
    _paste(canvas, cv2.resize(photo, None, fx=scale, fy=scale), x, y)
    faces = detector.detect(canvas)
    assert len(faces) == 1
    pasted = faces[0]
    offset = np.array([x, y], dtype=np.float32)
    tolerance = 0.06 * alone.width
    np.testing.assert_allclose((pasted.landmarks - offset) / scale, alone.landmarks, atol=tolerance)
    np.testing.assert_allclose(
        (pasted.box - np.tile(offset, 2)) / scale, alone.box, atol=2 * tolerance
    )


def test_blank_image_has_no_face(detector: ScrfdDetector, crop_detector: ScrfdDetector) -> None:
    assert detector.detect(_grey_canvas(640, 480)) == []
    assert crop_detector.detect(_grey_canvas(112, 112)) == []


def test_two_photos_give_two_faces(
    detector: ScrfdDetector, photo: np.ndarray, other_photo: np.ndarray
) -> None:
    canvas = _grey_canvas(640, 320)
    _paste(canvas, photo, 80, 100)
    _paste(canvas, other_photo, 420, 110)
    faces = detector.detect(canvas)
    assert len(faces) == 2
    centres_x = sorted(f.center[0] for f in faces)
    assert abs(centres_x[0] - (80 + 56)) < 15
    assert abs(centres_x[1] - (420 + 56)) < 15


def test_min_face_size_drops_small_faces(
    detector: ScrfdDetector, photo: np.ndarray, other_photo: np.ndarray
) -> None:
    canvas = _grey_canvas(640, 320)
    _paste(canvas, cv2.resize(photo, None, fx=2, fy=2), 40, 48)
    _paste(canvas, other_photo, 420, 104)
    faces = detector.detect(canvas)
    assert len(faces) == 2
    sides = sorted(min(f.width, f.height) for f in faces)
    # Precondition: the two faces really differ in size, so a cut between them exists.
    assert sides[1] > 1.5 * sides[0]
    cut = int((sides[0] + sides[1]) / 2)
    kept = ScrfdDetector(MODEL, min_face_size=cut).detect(canvas)
    assert len(kept) == 1
    assert min(kept[0].width, kept[0].height) >= cut
    assert kept[0].center[0] < 320, "the big face is the one on the left"


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), dtype=np.float32),
        np.zeros((64, 64), dtype=np.uint8),
        np.zeros((64, 64, 4), dtype=np.uint8),
        np.zeros((0, 64, 3), dtype=np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float", "2-D", "RGBA", "empty", "list"],
)
def test_bad_input_is_refused(detector: ScrfdDetector, bad: object) -> None:
    with pytest.raises(ValueError):
        detector.detect(bad)  # type: ignore[arg-type]


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ScrfdDetector(tmp_path / "absent.onnx")


@pytest.mark.parametrize("size", [(600, 640), (640, 0)])
def test_input_size_must_tile_the_coarsest_stride(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        ScrfdDetector(MODEL, input_size=size)


# --- synthetic graphs with known outputs ---------------------------------------------------

STRIDES = (8, 16, 32)
ANCHORS = 2
FIRING_STRIDE = 16
BOX_DIST = (1.0, 2.0, 3.0, 4.0)  # left, top, right, bottom in stride units
KPS_DIST = (-1.0, -1.0, 1.0, -1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0)


def _synthetic_model(
    path: Path, *, batch_dim: bool, with_kps: bool = True, fixed_input: int | None = None
) -> Path:
    """An SCRFD-shaped graph: at stride 16 the score of a cell is the cell's mean normalised
    red value, other strides never fire; distances are constants. Outputs are listed in a
    scrambled order so only identification by shape and rows can pair them up."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    side: int | str = fixed_input if fixed_input else "h"
    width: int | str = fixed_input if fixed_input else "w"
    nodes, inits, outputs = [], [], []
    heads = [("score", 1), ("box", 4)] + ([("kps", 10)] if with_kps else [])
    for stride in STRIDES:
        pooled = f"pool{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool", ["input"], [pooled], kernel_shape=[stride] * 2, strides=[stride] * 2
            )
        )
        for head, dim in heads:
            weight = np.zeros((ANCHORS * dim, 3, 1, 1), np.float32)
            bias = np.zeros(ANCHORS * dim, np.float32)
            if head == "score" and stride == FIRING_STRIDE:
                weight[:, 0] = 1.0
            elif head == "score":
                bias[:] = -10.0
            elif head == "box":
                bias[:] = np.tile(BOX_DIST, ANCHORS)
            else:
                bias[:] = np.tile(KPS_DIST, ANCHORS)
            name = f"{head}{stride}"
            inits += [
                numpy_helper.from_array(weight, f"{name}_w"),
                numpy_helper.from_array(bias, f"{name}_b"),
                numpy_helper.from_array(
                    np.array([1, -1, dim] if batch_dim else [-1, dim], np.int64), f"{name}_shape"
                ),
            ]
            nodes += [
                helper.make_node("Conv", [pooled, f"{name}_w", f"{name}_b"], [f"{name}_conv"]),
                helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_t"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [f"{name}_t", f"{name}_shape"], [name]),
            ]
            shape = [1, None, dim] if batch_dim else [None, dim]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    order = np.random.default_rng(0).permutation(len(outputs))
    graph = helper.make_graph(
        nodes,
        "scrfd_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, width])],
        [outputs[i] for i in order],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("batch_dim", "fixed_input"), [(False, None), (True, None), (True, 320), (False, 320)]
)
def test_synthetic_decoding_is_exact(
    tmp_path: Path, batch_dim: bool, fixed_input: int | None
) -> None:
    model = _synthetic_model(tmp_path / "m.onnx", batch_dim=batch_dim, fixed_input=fixed_input)
    # A fixed input overrides input_size, so both spellings must land on 320x320.
    size = (640, 640) if fixed_input else (320, 320)
    detector = ScrfdDetector(model, input_size=size)
    assert detector.input_size == (320, 320)

    # A 640x320 image is halved into the top of the 320x320 input. A red block on the
    # stride-16 cell at row 3, column 5 of the input fires only that cell's two anchors;
    # red, because the score reads channel 0, so feeding BGR would find nothing.
    image = np.zeros((320, 640, 3), np.uint8)
    row, col, cell = 3, 5, FIRING_STRIDE
    image[2 * row * cell : 2 * (row + 1) * cell, 2 * col * cell : 2 * (col + 1) * cell, 0] = 255
    faces = detector.detect(image)

    assert len(faces) == 1, "the two anchors of one cell share a box, so NMS keeps one"
    face = faces[0]
    assert face.score == pytest.approx((255 - 127.5) / 128, abs=1e-4)
    # InsightFace puts the anchor at the cell's top-left corner, not its centre.
    centre = np.array([col * cell, row * cell], np.float32)
    left, top, right, bottom = (d * cell for d in BOX_DIST)
    box = np.array([centre[0] - left, centre[1] - top, centre[0] + right, centre[1] + bottom])
    np.testing.assert_allclose(face.box, box * 2, atol=1e-3)
    kps = centre + np.array(KPS_DIST, np.float32).reshape(5, 2) * cell
    np.testing.assert_allclose(face.landmarks, kps * 2, atol=1e-3)


def test_synthetic_threshold_and_min_size(tmp_path: Path) -> None:
    model = _synthetic_model(tmp_path / "m.onnx", batch_dim=False)
    image = np.zeros((320, 320, 3), np.uint8)
    image[48:64, 80:96] = 255
    assert len(ScrfdDetector(model, input_size=(320, 320)).detect(image)) == 1
    assert ScrfdDetector(model, input_size=(320, 320), score_threshold=0.999).detect(image) == []
    # The box is 4 * 16 = 64 px wide and 6 * 16 = 96 px high: its shorter side is 64.
    assert len(ScrfdDetector(model, input_size=(320, 320), min_face_size=64).detect(image)) == 1
    assert ScrfdDetector(model, input_size=(320, 320), min_face_size=65).detect(image) == []


def test_model_without_keypoints_is_refused(tmp_path: Path) -> None:
    model = _synthetic_model(tmp_path / "m.onnx", batch_dim=False, with_kps=False)
    with pytest.raises(ValueError, match="keypoint"):
        ScrfdDetector(model)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((112, 112), (320, 320)),  # small crops are enlarged to 320, not to 640
        ((480, 360), (384, 480)),  # mid-size photos keep their resolution, padded to 32
        ((3000, 4000), (640, 480)),  # large photos shrink to 640
        ((40, 1000), (640, 32)),  # extreme aspect ratios keep at least one stride
    ],
)
def test_adaptive_input_size(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    assert adaptive_input_size(shape, 32) == expected
