"""MTCNN on ONNX Runtime against real face photos: yield, landmark sanity, geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.vision.detection import Face
from service.vision.mtcnn import MtcnnConfig, MtcnnDetector
from tests.conftest import DATA, MODELS, load_rgb


def assert_plausible(face: Face) -> None:
    le, re, nose, lm, rm = face.landmarks
    assert le[1] < nose[1] and re[1] < nose[1], "eyes must be above the nose"
    assert nose[1] < lm[1] and nose[1] < rm[1], "nose must be above the mouth"
    assert le[0] < re[0] and lm[0] < rm[0], "left points must be left of right points"
    iod = float(np.linalg.norm(re - le))
    assert 0.2 * face.width < iod < 0.7 * face.width, (
        f"inter-ocular {iod:.1f} vs box {face.width:.1f}"
    )
    x1, y1, x2, y2 = face.box
    slack = 0.1 * face.width
    assert np.all(face.landmarks[:, 0] > x1 - slack) and np.all(face.landmarks[:, 0] < x2 + slack)
    assert np.all(face.landmarks[:, 1] > y1 - slack) and np.all(face.landmarks[:, 1] < y2 + slack)


def test_yield_and_landmark_sanity_on_real_photos(mtcnn, photos):
    found = 0
    for path in photos:
        image = load_rgb(path)
        faces = mtcnn.detect(image)
        if not faces:
            continue
        found += 1
        main = max(faces, key=lambda f: f.area)
        assert_plausible(main)
        # The loose crops centre the subject: its face centre is near the image centre.
        cx, cy = main.center
        assert abs(cx - 56) < 25 and abs(cy - 56) < 25, path
        assert 0.0 < main.score <= 1.0
    print(f"MTCNN yield on the sample: {found}/{len(photos)}")
    assert found / len(photos) >= 0.95


def test_results_are_sorted_floats(mtcnn, photos):
    faces = mtcnn.detect(load_rgb(photos[0]))
    assert faces
    assert all(f.box.dtype == np.float32 and f.landmarks.shape == (5, 2) for f in faces)


def test_upscaled_photo_scales_landmarks(mtcnn, photos):
    image = load_rgb(photos[3])
    small = max(mtcnn.detect(image), key=lambda f: f.area)
    big = max(
        mtcnn.detect(cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)),
        key=lambda f: f.area,
    )
    assert np.abs(big.landmarks / 3 - small.landmarks).max() < 3.0


def test_offset_in_canvas_shifts_landmarks(mtcnn, photos):
    image = load_rgb(photos[5])
    alone = max(mtcnn.detect(image), key=lambda f: f.area)
    canvas = np.full((300, 640, 3), 90, dtype=np.uint8)
    canvas[150:262, 400:512] = image
    placed = max(mtcnn.detect(canvas), key=lambda f: f.area)
    assert np.abs(placed.landmarks - (alone.landmarks + np.array([400, 150]))).max() < 2.5


def test_blank_image_has_no_face(mtcnn):
    assert mtcnn.detect(np.full((200, 300, 3), 128, dtype=np.uint8)) == []


def test_tiny_image_has_no_face(mtcnn):
    assert mtcnn.detect(np.zeros((10, 10, 3), dtype=np.uint8)) == []


def test_two_photos_side_by_side_give_two_faces(mtcnn, photos):
    canvas = np.concatenate([load_rgb(photos[0]), load_rgb(photos[20])], axis=1)
    faces = mtcnn.detect(canvas)
    centres = sorted(f.center[0] for f in faces)
    assert len(faces) == 2
    assert centres[0] < 112 < centres[1]


def test_min_face_size_filters_small_faces(photos):
    image = load_rgb(photos[0])
    assert MtcnnDetector(MODELS, MtcnnConfig(min_face_size=20)).detect(image)
    assert MtcnnDetector(MODELS, MtcnnConfig(min_face_size=200)).detect(image) == []


def test_large_photo_is_shrunk_for_detection_but_answers_in_full_resolution(photos):
    image = load_rgb(photos[7])
    reference = max(MtcnnDetector(MODELS).detect(image), key=lambda f: f.area)
    huge = cv2.resize(image, None, fx=20, fy=20, interpolation=cv2.INTER_CUBIC)  # 2240 px
    capped = MtcnnDetector(MODELS, MtcnnConfig(max_side=560))
    face = max(capped.detect(huge), key=lambda f: f.area)
    assert np.abs(face.landmarks / 20 - reference.landmarks).max() < 3.0


def test_profile_faces_are_mostly_found(mtcnn):
    profiles = sorted((DATA / "val" / "cfp" / "Data" / "Images").glob("*/profile/01.jpg"))[:40:2]
    if not profiles:
        pytest.skip("CFP profile photos not found")
    found = sum(bool(mtcnn.detect(load_rgb(p))) for p in profiles)
    print(f"MTCNN on CFP profiles: {found}/{len(profiles)}")
    assert found >= 0.8 * len(profiles)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((50, 50), np.uint8),
        np.zeros((50, 50, 3), np.float32),
        np.zeros((50, 50, 4), np.uint8),
    ],
)
def test_bad_arrays_are_refused(mtcnn, bad):
    with pytest.raises(ValueError):
        mtcnn.detect(bad)
