"""`facemargin evaluate` on a plain pairs list of real aligned faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from tests.training.test_trainer import tiny_config
from training.data import index_faces
from training.evaluation import kfold_accuracy
from training.trainer import CHECKPOINT_NAME, Trainer


def write_pairs(faces: Path, path: Path) -> list[str]:
    """A 10-fold pairs list over `faces` (same and different people, plus one pair whose second
    face is missing); returns its lines."""
    index = index_faces(faces)
    rng = np.random.default_rng(0)
    lines = []
    for fold in range(10):
        for _ in range(6):
            label = int(rng.integers(len(index.identities)))
            members = [p for p, lab in zip(index.paths, index.labels, strict=True) if lab == label]
            a, b = rng.choice(len(members), 2, replace=False)
            lines.append(f"{members[a]} {members[b]} 1 {fold}")
            i, j = rng.choice(len(index), 2, replace=False)
            if index.labels[i] != index.labels[j]:
                lines.append(f"{index.paths[i]} {index.paths[j]} 0 {fold}")
    lines.append(f"{index.paths[0]} nobody/missing.png 0 0")  # a face the detector missed
    path.write_text("# test pairs\n" + "\n".join(lines) + "\n")
    return lines


@pytest.mark.slow
def test_evaluate_a_pairs_list(small_faces, tmp_path, capsys):
    Trainer(tiny_config(small_faces, tmp_path / "run", epochs=1)).fit(stop_after_steps=2)
    pairs = small_faces / "test-pairs.txt"
    lines = write_pairs(small_faces, pairs)

    out = tmp_path / "eval"
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    assert main(["evaluate", str(checkpoint), "--pairs", str(pairs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "TAR" in printed

    report = json.loads((out / "report.json").read_text())
    result = report["verification"]["test-pairs"]
    assert result["n_pairs"] == len(lines)
    assert result["n_missing"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0
    assert (out / "roc.png").stat().st_size > 5_000
    assert report["open_set"] == {}
    # The pair scores saved beside the report reproduce it (they feed later comparisons).
    saved = np.load(out / "scores-test-pairs.npz")
    assert saved["scores"].shape == (len(lines),) and np.isnan(saved["scores"]).sum() == 1
    assert kfold_accuracy(saved["scores"], saved["same"], saved["fold"])[0] == pytest.approx(
        result["accuracy"]
    )


def test_evaluate_needs_something_to_score(tmp_path):
    with pytest.raises(SystemExit, match="give --cfp"):
        main(["evaluate", str(tmp_path / "checkpoint.pt")])
