"""Open-set identification metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.open_set import OpenSetReport, open_set_report, split_open_set


def unit(dim: int, axis: int, score: float, spare: int) -> np.ndarray:
    """A unit vector scoring `score` against basis vector `axis`, the rest on `spare`."""
    v = np.zeros(dim)
    v[axis] = score
    v[spare] = math.sqrt(1 - score * score)
    return v


def test_open_set_perfect_gallery():
    gallery = np.eye(8)[:5]
    ids = np.array(list("abcde"))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, (7, 8))
    noise[:, 5:] = 0  # stay clear of the axes the strangers use
    mated = np.eye(8)[[0, 1, 2, 3, 4, 0, 2]] + noise
    mated /= np.linalg.norm(mated, axis=1, keepdims=True)
    non_mated = np.eye(8)[[5, 6, 7, 5, 6, 7, 5, 6, 7, 5]]
    probes = np.r_[mated, non_mated]
    probe_ids = np.r_[ids[[0, 1, 2, 3, 4, 0, 2]], ["x"] * 10]
    report = open_set_report(gallery, ids, probes, probe_ids, (0.1, 0.5))
    assert report.rank1 == 1.0
    assert [p.dir for p in report.dir_at_fpir] == [1.0, 1.0]
    assert report.n_mated == 7 and report.n_non_mated == 10 and report.n_gallery == 5


def constructed_open_set():
    """10 gallery identities; non-mated top scores 0.05 .. 0.5; 4 mated probes."""
    dim, spare = 11, 10
    gallery = np.eye(dim)[:10]
    gallery_ids = np.array([f"id{i}" for i in range(10)])
    non_mated = [unit(dim, i, (i + 1) / 20, spare) for i in range(10)]
    mated = [
        unit(dim, 0, 0.9, spare),  # right identity, high score
        unit(dim, 1, 0.46, spare),  # right identity, just above the 0.45 non-mated score
        unit(dim, 2, 0.45, spare),  # right identity, tied with a non-mated score
        unit(dim, 4, 0.95, spare),  # wrong identity at rank 1 (probe is id3)
    ]
    probes = np.array(mated + non_mated)
    probe_ids = np.array(["id0", "id1", "id2", "id3"] + ["stranger"] * 10)
    return gallery, gallery_ids, probes, probe_ids


def test_open_set_exact_dir_at_fpir():
    report = open_set_report(*constructed_open_set(), fpir_targets=(0.1, 0.01))
    assert report.rank1 == 3 / 4
    fpir10, fpir1 = report.dir_at_fpir
    # FPIR 0.1 of 10 non-mated: one false alarm (0.5) allowed, threshold just above 0.45.
    assert fpir10.threshold == pytest.approx(0.45) and fpir10.threshold > 0.45
    assert fpir10.fpir_achieved == pytest.approx(0.1)
    assert fpir10.dir == 2 / 4  # 0.9 and 0.46; 0.45 is below; the wrong identity never counts
    assert fpir10.supported and fpir10.n_non_mated_needed == 10
    # FPIR 0.01 needs 100 non-mated probes: reported at zero false alarms, not supported.
    assert not fpir1.supported and fpir1.fpir_achieved == 0.0
    assert fpir1.dir == 1 / 4
    assert OpenSetReport.model_validate_json(report.model_dump_json()) == report


def test_open_set_missing_probes_are_misses_and_false_alarms():
    gallery, gallery_ids, probes, probe_ids = constructed_open_set()
    nan_row = np.full((1, probes.shape[1]), np.nan)
    probes = np.r_[probes, nan_row, nan_row]
    probe_ids = np.r_[probe_ids, ["id5", "stranger"]]
    report = open_set_report(gallery, gallery_ids, probes, probe_ids, fpir_targets=(0.1,))
    assert report.n_missing == 2 and report.n_mated == 5 and report.n_non_mated == 11
    assert report.rank1 == 3 / 5
    # 11 non-mated allow 1 false alarm, spent by the missing one: threshold above 0.5.
    (point,) = report.dir_at_fpir
    assert point.threshold > 0.5 and point.fpir_achieved == pytest.approx(1 / 11)
    assert point.dir == 1 / 5


def test_open_set_missing_gallery_row_cannot_match():
    gallery = np.eye(4)[:3].copy()
    gallery[1] = np.nan
    ids = np.array(["a", "b", "c"])
    probes = np.eye(4)[[0, 1, 3]]
    report = open_set_report(gallery, ids, probes, np.array(["a", "b", "z"]), (0.5,))
    assert report.n_missing_gallery == 1 and report.n_mated == 2
    assert report.rank1 == 0.5


def test_open_set_rejects_unnormalised_rows():
    with pytest.raises(ValueError, match="L2-normalised"):
        open_set_report(np.eye(2) * 2, ["a", "b"], np.eye(2), ["a", "z"])


def test_split_open_set_by_identity():
    rng = np.random.default_rng(0)
    ids, paths = [], []
    for person in range(20):
        for photo in rng.permutation(int(rng.integers(1, 6))):
            ids.append(f"p{person:02d}")
            paths.append(f"p{person:02d}/{photo:02d}.jpg")
    gallery, probe = split_open_set(ids, paths, known_fraction=0.5, seed=3)
    assert np.intersect1d(gallery, probe).size == 0
    assert np.array_equal(np.sort(np.r_[gallery, probe]), np.arange(len(ids)))
    known = {ids[i] for i in gallery}
    assert len(known) == len(gallery) == 10  # one image per known identity
    for i in gallery:
        assert paths[i] == min(p for p, d in zip(paths, ids, strict=True) if d == ids[i])
    unknown = set(ids) - known
    for i in range(len(ids)):
        # every image of an unknown identity, and all but the first of a known one, probes
        assert (i in probe) == (ids[i] in unknown or i not in gallery)
    again = split_open_set(ids, paths, known_fraction=0.5, seed=3)
    assert np.array_equal(again[0], gallery) and np.array_equal(again[1], probe)
    other = split_open_set(ids, paths, known_fraction=0.5, seed=4)
    assert {ids[i] for i in other[0]} != known
    assert split_open_set(ids, paths, known_fraction=0.0)[0].size == 0
