"""Plots of verification results: figures that need no GUI and no pyplot state, ROC
curves, score histograms and a training run's curves. matplotlib is imported only when a figure is made."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from training.evaluation import check_pairs


def new_figure(width: float, height: float):
    """A figure not registered with pyplot: no GUI backend, no global state, safe in workers."""
    import logging

    import matplotlib

    matplotlib.use("Agg")  # headless, also for anything else that touches pyplot later
    from matplotlib.figure import Figure

    # Mathtext falls back from fonts this machine lacks and warns once per font; harmless.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)

    return Figure(figsize=(width, height), layout="tight")


def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "ROC"
) -> Path:
    """Overlay ROC curves {name: (far, tar)} on a log FAR axis from 1e-4 to 1; write a PNG."""
    fig = new_figure(6.5, 5)
    ax = fig.subplots()
    for name, (far, tar) in curves.items():
        far, tar = np.asarray(far, dtype=np.float64), np.asarray(tar, dtype=np.float64)
        keep = far > 0  # FAR 0 has no place on a log axis
        ax.plot(far[keep], tar[keep], label=name)
    ax.set(
        xscale="log",
        xlim=(1e-4, 1),
        ylim=(0, 1.01),
        xlabel="false accept rate",
        ylabel="true accept rate",
        title=title,
    )
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_score_histograms(
    scores: np.ndarray,
    same: np.ndarray,
    path: Path,
    threshold: float | None = None,
    title: str = "genuine vs impostor scores",
) -> Path:
    """Genuine and impostor score histograms on shared bins (NaN pairs counted in the
    legend, not drawn); an optional threshold line. Writes a PNG."""
    scores, same = check_pairs(scores, same)
    missing = np.isnan(scores)
    finite = scores[~missing]
    low, high = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1e-6, 61)
    fig = new_figure(6.5, 4)
    ax = fig.subplots()
    for label, mask in (("genuine", same), ("impostor", ~same)):
        values = scores[mask & ~missing]
        ax.hist(
            values,
            bins=bins,
            alpha=0.55,
            density=bool(values.size),  # densities: the two kinds can differ in number
            label=f"{label} ({values.size}, {int((mask & missing).sum())} missing)",
        )
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="cosine similarity", ylabel="density", title=title)
    ax.legend()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_curves(metrics: Path, out: Path) -> Path | None:
    """A run's metrics log drawn: loss and accuracy against step, held-out accuracy against
    epoch."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val" and "val_accuracy" in r]
    if not train:
        return None
    fig = new_figure(15, 4)
    axes = fig.subplots(1, 3)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    if any("accuracy" in r for r in train):
        acc = [r for r in train if "accuracy" in r]
        axes[1].plot([r["step"] for r in acc], [r["accuracy"] for r in acc])
    axes[1].set(xlabel="step", ylabel="batch accuracy", title="training accuracy (head logits)")
    if val:
        axes[2].plot([r["epoch"] for r in val], [r["val_accuracy"] for r in val], marker="o")
    axes[2].set(
        xlabel="epoch", ylabel="10-fold accuracy", title="held-out identities, verification"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(metrics.parent.name)
    fig.savefig(out, dpi=100)
    return out
