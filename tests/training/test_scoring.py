"""`facemargin evaluate` on a plain pairs list of real aligned faces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.cli import main
from tests.training.test_trainer import tiny_config
from training.data import index_faces
from training.trainer import CHECKPOINT_NAME, Trainer


@pytest.mark.slow
def test_evaluate_a_pairs_list(small_faces, tmp_path, capsys):
    Trainer(tiny_config(small_faces, tmp_path / "run", epochs=1)).fit(stop_after_steps=2)
    index = index_faces(small_faces)
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
    pairs = small_faces / "test-pairs.txt"
    pairs.write_text("# test pairs\n" + "\n".join(lines) + "\n")

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


def test_evaluate_needs_something_to_score(tmp_path):
    with pytest.raises(SystemExit, match="give --cfp"):
        main(["evaluate", str(tmp_path / "checkpoint.pt")])
