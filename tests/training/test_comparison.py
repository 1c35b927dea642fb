"""The loss-comparison report built from real (tiny) runs: the table carries each run's own
evaluation, unfinished runs show as pending, and the plots are drawn."""

from __future__ import annotations

import json

import pytest

from service.cli import main
from tests.training.test_scoring import write_pairs
from tests.training.test_trainer import tiny_config
from training.comparison import write_comparison
from training.trainer import CHECKPOINT_NAME, Trainer


@pytest.mark.slow
def test_table_and_plots_from_real_runs(small_faces, tmp_path):
    configs, runs = tmp_path / "configs", tmp_path / "runs"
    configs.mkdir()
    pairs = small_faces / "cfp-ff.txt"  # named like the CFP protocol the table reads
    write_pairs(small_faces, pairs)
    for name, head in (
        ("01-softmax", "softmax"),
        ("02-cosface", "cosface"),
        ("03-arcface", "arcface"),
    ):
        (configs / f"{name}.toml").write_text(f'head = "{head}"\n')
    for name, head in (("01-softmax", "softmax"), ("02-cosface", "cosface")):
        config = tiny_config(small_faces, runs / name, head=head, epochs=1)
        Trainer(config).fit(stop_after_steps=2)
        (runs / name / "config.json").write_text(config.model_dump_json())
        out = runs / name / "eval"
        checkpoint = str(runs / name / CHECKPOINT_NAME)
        assert main(["evaluate", checkpoint, "--pairs", str(pairs), "--out", str(out)]) == 0

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.md").write_text(
        "# prose\n<!-- results: generated -->\nstale\n<!-- /results -->\nmore prose\n"
    )
    written = write_comparison(runs, configs, docs)
    readme = (docs / "README.md").read_text()
    assert "stale" not in readme and readme.endswith("more prose\n")
    assert (docs / "results.md").read_text() in readme

    rows = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert [r["run"] for r in rows] == ["01-softmax", "02-cosface", "03-arcface"]
    for row in rows[:2]:
        report = json.loads((runs / row["run"] / "eval" / "report.json").read_text())
        assert row["cfp-ff"]["accuracy"] == report["verification"]["cfp-ff"]["accuracy"]
        assert row["steps"] == 2
    assert "cfp-ff" not in rows[2]
    table = (tmp_path / "docs" / "results.md").read_text().splitlines()
    assert f"{100 * rows[1]['cfp-ff']['accuracy']:.2f}" in table[3]
    assert "cosface" in table[3] and "softmax" in table[2]
    assert "pending" in table[4] and "03-arcface" in table[4]
    for name in ("roc-cfp-ff.png", "accuracy.png", "training.png"):
        assert (tmp_path / "docs" / name) in written
        assert (tmp_path / "docs" / name).stat().st_size > 5_000
