"""YuNet on onnxruntime: the same faces as OpenCV's FaceDetectorYN, landmarks in our order,
any input size, and the size policy and filters."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from service.vision.yunet import YunetDetector, padded, scaled_size
from tests.conftest import DATA, MODELS, SHARED, load_rgb, spread

SOURCE = SHARED / "models" / "third-party" / "yunet" / "face_detection_yunet_2023mar.onnx"
MODEL = MODELS / "yunet.onnx"
CFP = DATA / "val" / "cfp" / "Data" / "Images"
CELEBA = DATA / "train" / "celeba"


def _photos(pattern_root, pattern: str, count: int) -> list[np.ndarray]:
    if not pattern_root.is_dir():
        pytest.skip(f"face data not found at {pattern_root}")
    return [load_rgb(p) for p in spread(list(pattern_root.glob(pattern)), count)]


@pytest.fixture(scope="module")
def frontal() -> list[np.ndarray]:
    return _photos(CFP, "*/frontal/*.jpg", 16)


@pytest.fixture(scope="module")
def mixed(frontal) -> list[np.ndarray]:
    """Frontal and profile CFP photos and CelebA loose crops."""
    return frontal + _photos(CFP, "*/profile/*.jpg", 10) + _photos(CELEBA, "*/*.jpg", 14)


@pytest.fixture(scope="module")
def detector() -> YunetDetector:
    return YunetDetector(MODEL)


def _opencv_faces(image: np.ndarray, threshold: float, nms: float) -> np.ndarray:
    height, width = image.shape[:2]
    reference = cv2.FaceDetectorYN.create(str(SOURCE), "", (width, height), threshold, nms, 5000)
    _, faces = reference.detect(np.ascontiguousarray(image[:, :, ::-1]))
    return np.zeros((0, 15), np.float32) if faces is None else faces


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} absent")
@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_same_faces_as_opencv(mixed, threshold):
    """At the photo's own size (no resize: min_side=0), padded to 32 by both, the faces are
    OpenCV's; cropping to odd sizes exercises the padding."""
    ours = YunetDetector(MODEL, score_threshold=threshold, min_side=0)
    images = mixed + [image[3:100, 5:98] for image in mixed[:6]]
    compared = 0
    for image in images:
        reference = _opencv_faces(image, threshold, 0.3)
        faces = ours.detect(image)
        assert len(faces) == len(reference)
        for face, ref in zip(faces, reference, strict=True):
            x, y, w, h = ref[:4]
            np.testing.assert_allclose(face.box, [x, y, x + w, y + h], atol=1e-2)
            np.testing.assert_allclose(face.landmarks.ravel(), ref[4:14], atol=1e-2)
            assert abs(face.score - ref[14]) < 1e-3
            compared += 1
    assert compared >= 0.9 * len(images)  # the comparison did compare faces


def test_landmark_order_on_frontal_photos(frontal, detector):
    """Eye on the image's left first; eyes above the nose above the mouth corners."""
    for image in frontal:
        faces = detector.detect(image)
        assert faces, "no face on a frontal CFP photo"
        (lex, ley), (rex, rey), (_, ny), (lmx, lmy), (rmx, rmy) = faces[0].landmarks
        assert lex < rex and lmx < rmx
        assert max(ley, rey) < ny < min(lmy, rmy)


def test_faces_are_sorted_and_typed(mixed, detector):
    for image in mixed:
        faces = detector.detect(image)
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        for face in faces:
            assert face.box.dtype == np.float32 and face.box.shape == (4,)
            assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)
            assert face.score >= detector.score_threshold


@pytest.mark.parametrize(
    "shape", [(112, 112), (250, 250), (97, 203), (40, 1000), (3000, 25), (1, 50), (1, 1), (2, 2)]
)
def test_any_size_runs(frontal, detector, shape):
    image = cv2.resize(frontal[0], shape[::-1])
    faces = detector.detect(image)
    for face in faces:
        assert np.isfinite(face.box).all() and np.isfinite(face.landmarks).all()
    if min(shape) >= 97:
        assert faces


def test_large_photo_is_scaled_down_and_back(frontal):
    """A 2000 px photo runs at 640, and its faces come back in its own pixels: those of the
    same photo blown up to 640 by the size policy, times 2000 / 112."""
    small = frontal[0]
    large = cv2.resize(small, (2000, 2000), interpolation=cv2.INTER_LINEAR)
    (face_small,) = YunetDetector(MODEL, min_side=640).detect(small)[:1]
    (face_large,) = YunetDetector(MODEL).detect(large)[:1]
    factor = 2000 / small.shape[0]
    # The network is not exactly scale-invariant: boxes move by up to ~5% of the face.
    np.testing.assert_allclose(
        face_large.box / factor, face_small.box, atol=0.05 * face_small.width
    )
    np.testing.assert_allclose(face_large.landmarks / factor, face_small.landmarks, atol=1.5)


def test_no_face_in_grey_or_noise(detector):
    rng = np.random.default_rng(0)
    for shape in [(112, 112, 3), (480, 640, 3)]:
        assert detector.detect(np.full(shape, 128, np.uint8)) == []
        assert detector.detect(rng.integers(0, 256, shape, dtype=np.uint8)) == []


def test_min_face_size(frontal):
    image = frontal[1]
    (face,) = YunetDetector(MODEL).detect(image)[:1]
    side = min(face.width, face.height)
    assert YunetDetector(MODEL, min_face_size=int(side) - 1).detect(image)
    larger = YunetDetector(MODEL, min_face_size=int(side) + 1).detect(image)
    assert all(min(f.width, f.height) >= side + 1 for f in larger)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((50, 50), np.uint8),
        np.zeros((50, 50, 4), np.uint8),
        np.zeros((50, 50, 3), np.float32),
        np.zeros((0, 50, 3), np.uint8),
    ],
)
def test_bad_images_are_refused(detector, image):
    with pytest.raises(ValueError):
        detector.detect(image)


def test_size_policy():
    assert scaled_size(112, 112) == (224, 224)
    assert scaled_size(112, 112, min_side=0) == (112, 112)
    assert scaled_size(250, 250) == (250, 250)
    assert scaled_size(480, 640) == (640, 480)
    assert scaled_size(3000, 4000) == (640, 480)
    assert scaled_size(1, 50, min_side=0) == (50, 1)
    assert [padded(s) for s in (1, 32, 33, 250)] == [32, 32, 64, 256]


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} absent")
def test_fixed_size_file_is_refused_with_a_hint():
    with warnings.catch_warnings(), pytest.raises(ValueError, match="facemargin export yunet"):
        YunetDetector(SOURCE)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        YunetDetector(MODELS / "no-such-yunet.onnx")


def test_the_fallback_threshold_only_speaks_when_nothing_is_confident():
    """Profiles YuNet is unsure of are found through the fallback; a photo with a confident
    face gets no doubtful extras from it."""
    plain = YunetDetector(MODEL, score_threshold=0.6)
    fallback = YunetDetector(MODEL, score_threshold=0.6, fallback_threshold=0.3)
    low = YunetDetector(MODEL, score_threshold=0.3)
    rescued = 0
    for image in _photos(CFP, "*/profile/*.jpg", 300):
        confident, with_fallback, everything = (d.detect(image) for d in (plain, fallback, low))
        if confident:
            assert [f.score for f in with_fallback] == [f.score for f in confident]
        else:
            assert [f.score for f in with_fallback] == [f.score for f in everything]
            assert all(0.3 <= f.score < 0.6 for f in with_fallback)
            rescued += bool(with_fallback)
    assert rescued >= 1  # the sample holds profiles only the fallback finds
