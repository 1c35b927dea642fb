"""Shared fixtures: real face photos from ../shared/data, skipped cleanly when absent."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
MODELS = REPO / "models"


def load_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"unreadable test photo {path}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def spread(items: list[Path], count: int) -> list[Path]:
    """`count` items evenly spaced through a sorted list, so a sample spans identities."""
    items = sorted(items)
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def sample_photos(per_source: int = 15) -> list[Path]:
    """A fixed sample: the first photo of identities spread across CelebA, FIW and CFP frontal."""
    if not DATA.is_dir():
        pytest.skip(f"face data not found at {DATA}")
    celeba = [min(d.glob("*.jpg")) for d in (DATA / "train" / "celeba").iterdir() if d.is_dir()]
    fiw = [min(d.glob("*.jpg")) for d in (DATA / "train" / "fiw").iterdir() if d.is_dir()]
    cfp = list((DATA / "val" / "cfp" / "Data" / "Images").glob("*/frontal/01.jpg"))
    return spread(celeba, per_source) + spread(fiw, per_source) + spread(cfp, per_source)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return sample_photos()


@pytest.fixture(scope="session")
def mtcnn():
    from service.vision.mtcnn import MtcnnDetector

    return MtcnnDetector(MODELS)


def prepare_subset(
    root: Path,
    identities: int,
    per_identity: int,
    offset: int = 0,
    source: Path = DATA / "train" / "celeba",
    pattern: str = "*.jpg",
    template_name: str = "arcface-112-5pt",
) -> Path:
    """Copy a slice of identities (CelebA by default) into `root/raw` and align them into
    `root/aligned` onto the named template. `pattern` picks the photos inside an identity
    folder."""
    from service.vision.alignment import template_named
    from training.prepare import PrepareOptions, prepare

    if not source.is_dir():
        pytest.skip(f"face data not found at {source}")
    folders = sorted(p for p in source.iterdir() if p.is_dir())[offset : offset + identities]
    raw = root / "raw"
    for folder in folders:
        (raw / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob(pattern))[:per_identity]:
            shutil.copy(photo, raw / folder.name / photo.name)
    aligned = root / "aligned"
    template = template_named(template_name)
    prepare(PrepareOptions(source=raw, target=aligned, workers=2, template=template))
    return aligned


@pytest.fixture(scope="session")
def small_faces(tmp_path_factory) -> Path:
    """40 identities, up to 6 aligned faces each."""
    return prepare_subset(tmp_path_factory.mktemp("small_faces"), 40, 6)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """A real PostgreSQL database: FACEMARGIN_TEST_DATABASE_URL when set (`.ci/run` starts a
    server and sets it), else a throwaway server for this session."""
    from tests import postgres_server

    if os.environ.get("FACEMARGIN_TEST_DATABASE_URL"):
        yield os.environ["FACEMARGIN_TEST_DATABASE_URL"]
        return
    if postgres_server.server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries; install the postgresql package")
    root = Path(tempfile.mkdtemp(prefix="facemargin-pg-"))
    try:
        yield postgres_server.start(root)
    finally:
        postgres_server.stop(root)
