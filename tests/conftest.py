"""Shared fixtures: real face photos from ../shared/data, skipped cleanly when absent."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
MODELS = REPO / "models"


def load_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def sample_photos(per_source: int = 15) -> list[Path]:
    """A fixed, deterministic sample across the three sources (CelebA, FIW, CFP frontal)."""
    if not DATA.is_dir():
        pytest.skip(f"face data not found at {DATA}")
    groups = [
        sorted((DATA / "train" / "celeba").glob("*/*.jpg")),
        sorted((DATA / "train" / "fiw").glob("*/*.jpg")),
        sorted((DATA / "val" / "cfp" / "Data" / "Images").glob("*/frontal/01.jpg")),
    ]
    picked: list[Path] = []
    for files in groups:
        step = max(len(files) // per_source, 1)
        picked.extend(files[::step][:per_source])
    return picked


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return sample_photos()


@pytest.fixture(scope="session")
def mtcnn():
    from service.mtcnn import MtcnnDetector

    return MtcnnDetector(MODELS)
