"""A briefly trained checkpoint and a held-out pairs list of real aligned faces, shared by the
export tests (training for real is what gives batch-norm statistics worth exporting)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from tests.conftest import prepare_subset


@pytest.fixture(scope="session")
def checkpoint(small_faces, tmp_path_factory) -> Path:
    from training.config import TrainConfig
    from training.trainer import CHECKPOINT_NAME, Trainer

    run = tmp_path_factory.mktemp("export_run")
    config = TrainConfig(
        data=small_faces,
        out=run,
        backbone="mobilefacenet",
        embedding_dim=64,
        head="cosface",
        batch_size=16,
        epochs=4,
        lr=0.1,
        warmup_epochs=0.5,
        held_out=0.2,
        val_pairs=60,
        num_workers=0,
        device="cpu",
    )
    Trainer(config).fit()
    return run / CHECKPOINT_NAME


@pytest.fixture(scope="session")
def val_faces(tmp_path_factory) -> Path:
    """20 identities the checkpoint never saw, up to 6 aligned faces each."""
    return prepare_subset(tmp_path_factory.mktemp("val_faces"), 20, 6, offset=40)


def all_pairs(root: Path) -> list[str]:
    """Every pair among the aligned faces under `root` (identity = top folder), as pairs-list
    lines."""
    faces = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    return [
        f"{a} {b} {int(a.split('/')[0] == b.split('/')[0])}"
        for a, b in itertools.combinations(faces, 2)
    ]


def balanced(lines: list[str], seed: int = 0) -> list[str]:
    """Every genuine pair and as many impostor pairs, so accuracy is not the impostor share."""
    genuine = [line for line in lines if line.endswith(" 1")]
    impostor = [line for line in lines if line.endswith(" 0")]
    chosen = np.random.default_rng(seed).choice(len(impostor), len(genuine), replace=False)
    return genuine + [impostor[i] for i in sorted(chosen)]


@pytest.fixture(scope="session")
def val_pairs(val_faces) -> Path:
    """Every pair among the held-out faces (about 230 genuine, 5,100 impostor), plus one pair
    naming a face the detector 'missed'."""
    lines = all_pairs(val_faces)
    lines.append(f"{lines[0].split()[0]} missing/01.png 0")
    path = val_faces.parent / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def balanced_pairs(val_faces) -> Path:
    path = val_faces.parent / "balanced-pairs.txt"
    path.write_text("\n".join(balanced(all_pairs(val_faces))) + "\n")
    return path


@pytest.fixture(scope="session")
def exported(checkpoint, val_faces, val_pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    argv = ["export", str(checkpoint), str(out), "--pairs", str(val_pairs)]
    assert main([*argv, "--pairs-root", str(val_faces)]) == 0
    return out
