"""The one face preprocessing path: detect, select and align, shared by training data
preparation and the service so both hand the embedder identical pixels."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.vision.alignment import ARCFACE_112, Template, align_face
from service.vision.detection import Detector, Face, FacePolicy, select_faces


def _shipped_models_dir() -> Path:
    """models/ beside the packages in a source checkout; share/facemargin/models once installed."""
    source_tree = Path(__file__).resolve().parents[2] / "models"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "facemargin" / "models"


MODELS_DIR = _shipped_models_dir()


class DetectorKind(StrEnum):
    mtcnn = "mtcnn"
    scrfd = "scrfd"
    yunet = "yunet"


@dataclass(frozen=True)
class AlignedFace:
    face: Face
    pixels: np.ndarray  # (size, size, 3) uint8 RGB on the model's template


# Measured on 2,000 CFP profile photos with the input's long side raised to 224: 0.6 finds a
# face in 99.0% (0.5: 99.2%, 0.7: 98.3%, OpenCV's demo 0.9: 62.7%) and every frontal one, and
# reports a second face in 1.3% of CelebA crops against 1.8% at 0.5.
YUNET_THRESHOLD = 0.6
# When nothing reaches 0.6: exporting the default embedder with YuNet at 0.3 left 23 of
# CFP-FP's 7,000 pairs without a face against 73 at 0.6 (accuracy 94.43% against 93.86%),
# frontal photos unchanged; as a fallback it adds no doubtful faces to photos with a clear one.
YUNET_FALLBACK = 0.3


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class DetectorConfig(BaseModel):
    """Which detector, from which file, at which thresholds: what `build_detector` needs, and
    all it needs (the service fills it from its settings, `facemargin prepare` from flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: DetectorKind = DetectorKind.yunet
    path: Path = Field(
        MODELS_DIR,
        description="YuNet: the .onnx file, or a folder holding yunet.onnx. MTCNN: folder with "
        "mtcnn_{pnet,rnet,onet}.onnx. SCRFD: the .onnx file.",
    )
    min_face_size: int = Field(20, ge=8)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    fallback_threshold: float | None = Field(None, ge=0.0, le=1.0)
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 lets it choose.")


def build_detector(config: DetectorConfig) -> Detector:
    """The configured detector; imports only the implementation asked for."""
    if config.kind is DetectorKind.scrfd:
        from service.vision.scrfd import ScrfdDetector

        return ScrfdDetector(
            config.path,
            score_threshold=_or(config.threshold, 0.5),
            min_face_size=config.min_face_size,
            threads=config.threads,
        )
    if config.kind is DetectorKind.yunet:
        from service.vision.yunet import YunetDetector

        path = config.path
        return YunetDetector(
            path / "yunet.onnx" if path.is_dir() else path,
            score_threshold=_or(config.threshold, YUNET_THRESHOLD),
            fallback_threshold=_or(config.fallback_threshold, YUNET_FALLBACK),
            min_face_size=config.min_face_size,
            threads=config.threads,
        )
    from service.vision.mtcnn import MtcnnConfig, MtcnnDetector

    return MtcnnDetector(
        config.path, MtcnnConfig(min_face_size=config.min_face_size), threads=config.threads
    )


def detect_and_align(
    image: np.ndarray,
    detector: Detector,
    policy: FacePolicy = FacePolicy.largest,
    template: Template = ARCFACE_112,
) -> tuple[list[AlignedFace], int]:
    """Faces chosen by `policy` aligned onto `template` (the embedding model's), and how many
    faces the detector saw in all."""
    faces = detector.detect(image)
    chosen = select_faces(faces, policy, image.shape)
    aligned = [AlignedFace(face, align_face(image, face.landmarks, template)) for face in chosen]
    return aligned, len(faces)
