"""The shared preprocessing path: configuration picks the detector, and two independent
detectors put the landmarks in the same places on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.settings import Settings
from service.vision.detection import FacePolicy
from service.vision.mtcnn import MtcnnDetector
from service.vision.preprocess import (
    YUNET_THRESHOLD,
    DetectorKind,
    build_detector,
    detect_and_align,
)
from service.vision.scrfd import ScrfdDetector
from service.vision.yunet import YunetDetector
from tests.conftest import MODELS, SHARED, load_rgb

SCRFD_MODEL = SHARED / "models" / "scrfd_500m.onnx"
needs_scrfd = pytest.mark.skipif(not SCRFD_MODEL.exists(), reason=f"{SCRFD_MODEL} absent")


def test_default_settings_build_the_shipped_yunet_at_its_measured_threshold():
    detector = build_detector(Settings().detector_config())
    assert isinstance(detector, YunetDetector)
    assert detector.score_threshold == YUNET_THRESHOLD


def test_settings_select_mtcnn_and_a_yunet_file_and_threshold(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEMARGIN_DETECTOR", "mtcnn")
    assert isinstance(build_detector(Settings().detector_config()), MtcnnDetector)
    monkeypatch.setenv("FACEMARGIN_DETECTOR", "yunet")
    monkeypatch.setenv("FACEMARGIN_DETECTOR_PATH", str(MODELS / "yunet.onnx"))
    monkeypatch.setenv("FACEMARGIN_DETECTION_THRESHOLD", "0.8")
    assert build_detector(Settings().detector_config()).score_threshold == 0.8
    monkeypatch.setenv("FACEMARGIN_DETECTOR_PATH", str(tmp_path))  # a folder without yunet.onnx
    with pytest.raises(FileNotFoundError):
        build_detector(Settings().detector_config())


@needs_scrfd
def test_settings_select_scrfd(monkeypatch):
    monkeypatch.setenv("FACEMARGIN_DETECTOR", "scrfd")
    monkeypatch.setenv("FACEMARGIN_DETECTOR_PATH", str(SCRFD_MODEL))
    settings = Settings()
    assert settings.detector is DetectorKind.scrfd
    assert isinstance(build_detector(settings.detector_config()), ScrfdDetector)


def test_detect_and_align_returns_template_sized_faces(mtcnn, photos):
    aligned, seen = detect_and_align(load_rgb(photos[0]), mtcnn, FacePolicy.largest)
    assert seen >= 1 and len(aligned) == 1
    assert aligned[0].pixels.shape == (112, 112, 3) and aligned[0].pixels.dtype == np.uint8
    # The aligned crop is a face, not the black border: most pixels carry image content.
    assert (aligned[0].pixels.sum(axis=2) > 0).mean() > 0.8


def test_no_face_gives_nothing(mtcnn):
    aligned, seen = detect_and_align(np.full((100, 100, 3), 200, np.uint8), mtcnn)
    assert (aligned, seen) == ([], 0)


@needs_scrfd
def test_mtcnn_and_scrfd_agree_on_landmarks(mtcnn, photos):
    scrfd = ScrfdDetector(SCRFD_MODEL)
    gaps = []
    for path in photos:
        image = load_rgb(path)
        a, b = mtcnn.detect(image), scrfd.detect(image)
        if a and b:
            la = max(a, key=lambda f: f.area)
            lb = max(b, key=lambda f: f.area)
            iod = np.linalg.norm(la.landmarks[1] - la.landmarks[0])
            gaps.append(np.linalg.norm(la.landmarks - lb.landmarks, axis=1).mean() / iod)
    assert len(gaps) >= 0.9 * len(photos)
    print(f"mean MTCNN-SCRFD landmark gap: {np.median(gaps):.3f} of the inter-ocular distance")
    assert np.median(gaps) < 0.12
