"""The verification plots write real PNG files."""

from __future__ import annotations

import numpy as np

from training.evaluation import roc_curve
from training.plots import plot_roc, plot_score_histograms


def random_pairs(seed: int, n: int, nan_fraction: float):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    same[:2] = [True, False]
    scores = np.where(same, rng.normal(0.5, 0.2, n), rng.normal(0.2, 0.2, n))
    scores[rng.random(n) < nan_fraction] = np.nan
    return scores, same


def test_plots_write_png_files(tmp_path):
    scores, same = random_pairs(0, n=200, nan_fraction=0.05)
    far, tar, _ = roc_curve(scores, same)
    roc = plot_roc({"a": (far, tar), "b": (far, np.sqrt(tar))}, tmp_path / "roc.png", "ROC")
    hist = plot_score_histograms(scores, same, tmp_path / "hist.png", threshold=0.3, title="h")
    for path in (roc, hist):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
