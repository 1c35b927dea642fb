"""Settings for the torch-free preprocessing and the service, read from FACEMARGIN_* variables."""

from __future__ import annotations

import sys
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shipped_models_dir() -> Path:
    """models/ beside the packages in a source checkout; share/facemargin/models once installed."""
    source_tree = Path(__file__).resolve().parent.parent / "models"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / "facemargin" / "models"


MODELS_DIR = _shipped_models_dir()


class DetectorKind(StrEnum):
    mtcnn = "mtcnn"
    scrfd = "scrfd"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEMARGIN_", extra="ignore")

    max_image_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest width*height accepted, checked from the header before decoding.",
    )
    detector: DetectorKind = Field(default=DetectorKind.mtcnn, description="Face detector family.")
    detector_path: Path = Field(
        default=MODELS_DIR,
        description="MTCNN: folder with mtcnn_{pnet,rnet,onet}.onnx. SCRFD: the .onnx file.",
    )
    min_face_size: int = Field(
        default=20, ge=8, description="Smallest face side, in pixels, the detector searches for."
    )
    detection_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="SCRFD score threshold (MTCNN uses its own three)."
    )
    onnx_threads: int = Field(
        default=0, ge=0, description="Intra-op threads per ONNX Runtime session; 0 lets it choose."
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
