"""Real aligned faces for training tests, made by our own `prepare` from ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import DATA
from training.prepare import PrepareOptions, prepare


def prepare_subset(root: Path, identities: int, per_identity: int, offset: int = 0) -> Path:
    """Copy a slice of CelebA identities into `root/raw`, align them into `root/aligned`."""
    source = DATA / "train" / "celeba"
    if not source.is_dir():
        pytest.skip(f"face data not found at {source}")
    folders = sorted(p for p in source.iterdir() if p.is_dir())[offset : offset + identities]
    raw = root / "raw"
    for folder in folders:
        (raw / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:per_identity]:
            shutil.copy(photo, raw / folder.name / photo.name)
    aligned = root / "aligned"
    prepare(PrepareOptions(source=raw, target=aligned, workers=2))
    return aligned


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory) -> Path:
    """40 identities, up to 6 aligned faces each."""
    return prepare_subset(tmp_path_factory.mktemp("small_faces"), 40, 6)


@pytest.fixture(scope="module")
def one_thread():
    """Torch single-threaded for a module of small-tensor tests: on shared two-core machines a
    second intra-op thread mostly waits for a busy core (it made test_backbones 3x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
