"""Verification accuracy on identities kept out of training, measured after every epoch: the
signal that tells a run still learning something that transfers from one that only fits its
own classes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.data import FaceIndex
from training.evaluation import kfold_accuracy


def validation_pairs(
    index: FaceIndex, n_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to `n_pairs` genuine pairs and as many impostor pairs, with 10 folds."""
    rng = np.random.default_rng([seed, 7])
    by_class = [np.flatnonzero(index.labels == c) for c in range(index.num_classes)]
    genuine = [
        (a, b) for members in by_class for i, a in enumerate(members) for b in members[i + 1 :]
    ]
    if len(genuine) > n_pairs:
        genuine = [genuine[i] for i in rng.choice(len(genuine), n_pairs, replace=False)]
    impostor: list[tuple[int, int]] = []
    while len(impostor) < len(genuine):
        a, b = rng.integers(0, len(index), size=2)
        if index.labels[a] != index.labels[b]:
            impostor.append((int(a), int(b)))
    pairs = np.asarray(genuine + impostor, dtype=np.int64)
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]
    fold = rng.permutation(len(pairs)) % 10
    return pairs, same, fold


def held_out_accuracy(
    embed: Callable[[np.ndarray], np.ndarray], index: FaceIndex, n_pairs: int, seed: int
) -> tuple[float, float, int]:
    """(mean, std, pairs) of 10-fold accuracy on `validation_pairs`; `embed` maps the indices
    of the faces the pairs use to their L2-normalised embeddings, so each caller embeds its
    own way (images through the backbone, or cached trunk features through a stage)."""
    pairs, same, fold = validation_pairs(index, n_pairs, seed)
    used = np.unique(pairs)
    embeddings = embed(used)
    row = {int(i): r for r, i in enumerate(used)}
    left = embeddings[[row[int(i)] for i in pairs[:, 0]]]
    right = embeddings[[row[int(i)] for i in pairs[:, 1]]]
    mean, std, *_ = kfold_accuracy((left * right).sum(axis=1), same, fold)
    return float(mean), float(std), len(same)
