"""Verification metrics against hand-computed cases and brute-force oracles."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from training.evaluation import (
    VerificationReport,
    accuracy_at,
    best_threshold,
    eer,
    kfold_accuracy,
    missed_as_rejected,
    roc_auc,
    roc_curve,
    tar_at_far,
    threshold_at_far,
    verification_report,
)

# --- brute-force oracles -----------------------------------------------------------------


def brute_best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Try every candidate one by one; keep the first (lowest) best."""
    values = sorted(set(scores[~np.isnan(scores)].tolist()))
    candidates = [values[0] - 1 - abs(values[0])]
    candidates += [(a + b) / 2 for a, b in itertools.pairwise(values)]
    candidates += [values[-1] + 1 + abs(values[-1])]
    best, best_correct = None, -1
    for t in candidates:
        correct = sum(
            (s >= t) if g else (s < t) for s, g in zip(scores, same, strict=True) if s == s
        )
        if correct > best_correct:
            best, best_correct = t, correct
    return best


def brute_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Mann–Whitney over every genuine × impostor pair; NaN genuine = -inf, NaN impostor =
    +inf (the pessimistic rule), and a NaN genuine against a NaN impostor is a loss."""
    genuine = [-math.inf if math.isnan(s) else s for s in scores[same]]
    impostor = [math.inf if math.isnan(s) else s for s in scores[~same]]
    wins = 0.0
    for g in genuine:
        for i in impostor:
            wins += 1.0 if g > i else 0.5 if g == i else 0.0
    return wins / (len(genuine) * len(impostor))


def random_pairs(seed: int, n: int = 120, nan_fraction: float = 0.0):
    """Overlapping genuine/impostor scores rounded to 2 decimals, so ties are common."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    same[:2] = [True, False]
    scores = np.round(np.where(same, rng.normal(0.5, 0.2, n), rng.normal(0.2, 0.2, n)), 2)
    scores[rng.random(n) < nan_fraction] = np.nan
    return scores, same


# --- k-fold accuracy ---------------------------------------------------------------------


def test_kfold_accuracy_is_one_on_separable_scores():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = np.where(same, rng.uniform(0.6, 1.0, 100), rng.uniform(-0.2, 0.4, 100))
    fold = np.arange(100) % 10
    mean, std, per_fold, thresholds = kfold_accuracy(scores, same, fold)
    assert mean == 1.0 and std == 0.0
    assert per_fold.shape == thresholds.shape == (10,)
    assert np.all((thresholds > 0.4) & (thresholds < 0.6))


def test_threshold_comes_from_the_other_folds_not_the_held_out_one():
    # Fold 0 alone would be split perfectly at 0.25; fold 1 alone at 0.65.
    scores = np.array([0.3, 0.2, 0.9, 0.8, 0.5, 0.4])
    same = np.array([1, 0, 1, 1, 0, 0], bool)
    fold = np.array([0, 0, 1, 1, 1, 1])
    mean, std, per_fold, thresholds = kfold_accuracy(scores, same, fold)
    # Fold 0 judged at 0.65 (from fold 1): genuine 0.3 rejected (wrong), impostor 0.2 right.
    # Fold 1 judged at 0.25 (from fold 0): genuines right, impostors 0.5 and 0.4 accepted.
    np.testing.assert_allclose(thresholds, [0.65, 0.25])
    np.testing.assert_allclose(per_fold, [0.5, 0.5])
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.0)
    # Choosing on the held-out fold itself would have claimed 100%.
    assert accuracy_at(scores[:2], same[:2], best_threshold(scores[:2], same[:2])) == 1.0


def test_kfold_accuracy_by_hand_with_three_folds_and_a_tie():
    # Fold 2 is held out against folds 0+1: genuine {0.7}, impostors {0.6, 0.8}.
    # Candidates: <0.6 -> 1 right; 0.65 -> 2; 0.75 -> 1; >0.8 -> 2. Tie: lowest, 0.65.
    scores = np.array([0.7, 0.6, 0.8, 0.66, 0.64, 0.9])
    same = np.array([1, 0, 0, 1, 0, 1], bool)
    fold = np.array([0, 0, 1, 2, 2, 2])
    _, _, per_fold, thresholds = kfold_accuracy(scores, same, fold)
    assert thresholds[2] == pytest.approx(0.65)
    # 0.66 genuine accepted, 0.64 impostor rejected, 0.9 genuine accepted: 3/3.
    assert per_fold[2] == 1.0
    # Fold 0 held out against {0.8 imp, 0.66 gen, 0.64 imp, 0.9 gen}: best 0.65 (3/4) vs
    # 0.85 (3/4): lowest -> 0.65. Fold 0: 0.7 gen accepted, 0.6 imp rejected -> 1.0.
    assert thresholds[0] == pytest.approx(0.65) and per_fold[0] == 1.0
    # Fold 1 held out against {0.7 g, 0.6 i, 0.66 g, 0.64 i, 0.9 g}: 0.65 splits all 5.
    # Fold 1: impostor 0.8 accepted -> 0.0.
    assert thresholds[1] == pytest.approx(0.65) and per_fold[1] == 0.0
    mean, std, _, _ = kfold_accuracy(scores, same, fold)
    assert mean == pytest.approx(2 / 3) and std == pytest.approx(np.std([1, 0, 1]))


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_matches_brute_force(seed):
    scores, same = random_pairs(seed, n=80, nan_fraction=0.1)
    assert best_threshold(scores, same) == pytest.approx(brute_best_threshold(scores, same))


def test_nan_pairs_are_wrong_and_do_not_move_the_threshold():
    scores = np.array([0.9, 0.1, np.nan, np.nan, 0.8, 0.2, 0.7, 0.3])
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    _, _, per_fold, thresholds = kfold_accuracy(scores, same, fold)
    # Fold 0 held out: the NaN genuine and the NaN impostor are both wrong: 2/4.
    assert per_fold[0] == 0.5
    assert per_fold[1] == 1.0
    # The NaN pairs in fold 0 do not change the threshold chosen there for fold 1.
    assert thresholds[1] == pytest.approx(0.5)
    assert accuracy_at(np.array([np.nan]), np.array([True]), -1e9) == 0.0
    assert accuracy_at(np.array([np.nan]), np.array([False]), 1e9) == 0.0


def test_kfold_needs_two_folds():
    with pytest.raises(ValueError, match="2 folds"):
        kfold_accuracy(np.array([0.1, 0.2]), np.array([0, 1], bool), np.array([3, 3]))


# --- ROC, AUC, EER -----------------------------------------------------------------------


def test_roc_curve_by_hand():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    same = np.array([1, 1, 0, 1, 0], bool)
    far, tar, thresholds = roc_curve(scores, same)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])


def test_roc_curve_with_missing_faces_starts_and_ends_pessimistically():
    scores = np.array([0.9, np.nan, 0.2, np.nan])
    same = np.array([1, 1, 0, 0], bool)
    far, tar, thresholds = roc_curve(scores, same)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.2])
    np.testing.assert_allclose(far, [0.5, 0.5, 1.0])  # the NaN impostor is always accepted
    np.testing.assert_allclose(tar, [0.0, 0.5, 0.5])  # the NaN genuine is never accepted


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_matches_mann_whitney(seed):
    scores, same = random_pairs(seed, nan_fraction=0.1 if seed % 2 else 0.0)
    assert roc_auc(scores, same) == pytest.approx(brute_auc(scores, same), abs=1e-12)


def test_roc_auc_extremes():
    same = np.array([1, 1, 0, 0], bool)
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), same) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), same) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), same) == 0.5
    assert roc_auc(np.array([np.nan, np.nan, 0.2, 0.1]), same) == 0.0


def test_eer_on_a_symmetric_case():
    # Impostors mirror the genuine scores around 0.5; one of each on the wrong side.
    genuine = np.array([0.35, 0.6, 0.7, 0.8, 0.9])
    scores = np.r_[genuine, 1 - genuine]
    same = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    rate, threshold = eer(scores, same)
    # At 0.6: 1 of 5 impostors (0.65) accepted, 1 of 5 genuine (0.35) rejected.
    assert rate == pytest.approx(0.2)
    assert threshold == pytest.approx(0.6)


def test_eer_interpolates_between_operating_points():
    # Points (FAR, FRR): t=0.8 -> (0, 1/3); t=0.7 -> (1/2, 1/3). FAR - FRR goes -1/3 -> 1/6;
    # the crossing is 2/3 of the way: FAR = FRR = 1/3. 0.7 is the nearer point.
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.1])
    same = np.array([1, 1, 1, 0, 0], bool)
    rate, threshold = eer(scores, same)
    assert rate == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.7)
    assert eer(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0], bool))[0] == 0.0


# --- TAR at FAR --------------------------------------------------------------------------


def test_threshold_at_far_exact():
    impostors = np.arange(200) / 200  # 0.0 .. 0.995
    t = threshold_at_far(impostors, 1e-2)  # 2 false accepts allowed: 0.995 and 0.99
    assert 0.985 < t < 0.99 and t == np.nextafter(0.985, 1)
    assert np.mean(impostors >= t) == 0.01
    # Target between the grid points: floor, never above.
    assert np.mean(impostors >= threshold_at_far(impostors, 0.0149)) == 0.01
    # FAR 0: just above the highest impostor.
    assert threshold_at_far(impostors, 0.0) == np.nextafter(0.995, 1)
    assert threshold_at_far(impostors, 1.0) == -np.inf
    # 0.29 * 100 is 28.999... in floating point; 29 false accepts are still allowed.
    assert np.sum(np.arange(100) / 100 >= threshold_at_far(np.arange(100) / 100, 0.29)) == 29


def test_threshold_at_far_ties_are_all_rejected():
    impostors = np.array([0.1, 0.5, 0.5, 0.5, 0.2])
    # 1 accept allowed at FAR 0.2, but the top three are tied: accepting one accepts all.
    t = threshold_at_far(impostors, 0.2)
    assert np.sum(impostors >= t) == 0 and t > 0.5


def test_threshold_at_far_keeps_float32_exact():
    impostors = np.float32([0.3, 0.7, 0.1, 0.2])
    t = threshold_at_far(impostors, 0.0)
    assert t == float(np.nextafter(np.float32(0.7), np.float32(1)))
    assert not (np.float32(0.7) >= np.float32(t))  # survives a round trip through float32


def test_threshold_at_far_counts_missing_impostors_as_accepted():
    impostors = np.r_[np.arange(99) / 100, np.nan]
    t = threshold_at_far(impostors, 0.01)  # the NaN uses the one allowed false accept
    assert t == np.nextafter(0.98, 1)
    assert threshold_at_far(np.r_[np.arange(98) / 100, np.nan, np.nan], 0.01) == np.inf


def test_tar_at_far_exact_with_supported_flags():
    rng = np.random.default_rng(1)
    impostors = rng.permutation(np.arange(500) / 500)  # 0.0 .. 0.998
    genuine = np.array([0.999, 0.995, 0.991, 0.989, 0.5, 0.0])
    scores = np.r_[genuine, impostors]
    same = np.r_[np.ones(6, bool), np.zeros(500, bool)]
    points = {p.far: p for p in tar_at_far(scores, same, (1e-2, 1e-3))}
    # FAR 1e-2: 5 accepts allowed (0.998 .. 0.990), threshold just above the 6th, 0.988.
    assert points[1e-2].threshold == np.nextafter(0.988, 1)
    assert points[1e-2].tar == pytest.approx(4 / 6)
    assert points[1e-2].far_achieved == pytest.approx(0.01)
    assert points[1e-2].supported and points[1e-2].n_impostor == 500
    # FAR 1e-3 needs 1000 impostors: reported (threshold above every impostor) but unsupported.
    assert not points[1e-3].supported and points[1e-3].n_impostor_needed == 1000
    assert points[1e-3].threshold == np.nextafter(0.998, 1)
    assert points[1e-3].far_achieved == 0.0 and points[1e-3].tar == pytest.approx(1 / 6)


def test_tar_at_far_with_missing_faces():
    impostors = np.r_[np.arange(99) / 100, np.nan]
    scores = np.r_[0.995, 0.985, np.nan, impostors]
    same = np.r_[np.ones(3, bool), np.zeros(100, bool)]
    (point,) = tar_at_far(scores, same, (0.01,))
    # The NaN impostor spends the budget: threshold above 0.98; FAR achieved is still 1/100.
    assert point.far_achieved == pytest.approx(0.01)
    assert point.tar == pytest.approx(2 / 3)  # the NaN genuine pair is a false reject
    (point,) = tar_at_far(np.r_[scores, np.nan], np.r_[same, False], (0.01,))
    assert point.threshold == np.inf and point.tar == 0.0
    assert point.far_achieved == pytest.approx(2 / 101)


# --- the report --------------------------------------------------------------------------


def test_verification_report_counts_and_json_round_trip():
    scores, same = random_pairs(3, n=200, nan_fraction=0.05)
    scores[np.flatnonzero(~same)[:2]] = np.nan
    fold = np.arange(200) % 10
    report = verification_report(scores, same, fold, far_targets=(0.1, 0.01))
    assert report.n_pairs == 200
    assert report.n_genuine == same.sum() and report.n_impostor == (~same).sum()
    assert report.n_missing == np.isnan(scores).sum() > 0
    assert report.n_missing_genuine + report.n_missing_impostor == report.n_missing
    assert report.accuracy == pytest.approx(kfold_accuracy(scores, same, fold)[0])
    assert report.auc == pytest.approx(brute_auc(scores, same))
    assert len(report.fold_accuracy) == 10
    assert [p.far for p in report.tar_at_far] == [0.1, 0.01]
    text = report.model_dump_json()
    assert VerificationReport.model_validate_json(text) == report
    json.loads(text)  # strict JSON


def test_report_json_keeps_infinite_thresholds_valid():
    # Every impostor pair missed: the equal-error point is the strictest, at threshold +inf.
    scores = np.array([0.9, 0.8, np.nan, np.nan])
    same = np.array([1, 1, 0, 0], bool)
    report = verification_report(scores, same, np.array([0, 1, 0, 1]), far_targets=(0.1,))
    assert report.eer_threshold == np.inf
    text = report.model_dump_json()
    assert json.loads(text)["eer_threshold"] == "Infinity"
    assert VerificationReport.model_validate_json(text).eer_threshold == np.inf


def test_the_reports_tar_rejects_missed_faces_and_its_accuracy_counts_them_wrong():
    """CFP's shape: 3,500 impostors allow 3 false accepts at FAR 1e-3; 12 missed faces must not
    use them up (the report once read TAR 0 for every CFP run), yet stay errors in accuracy."""
    rng = np.random.default_rng(1)
    genuine = rng.uniform(0.3, 1.0, 3500)
    impostors = rng.uniform(-0.5, 0.5, 3500)
    genuine[:6] = np.nan
    impostors[:6] = np.nan
    scores = np.r_[genuine, impostors]
    same = np.r_[np.ones(3500, bool), np.zeros(3500, bool)]
    report = verification_report(scores, same, np.arange(7000) % 10, far_targets=(1e-3,))
    (point,) = report.tar_at_far
    expected = tar_at_far(missed_as_rejected(scores), same, [1e-3])[0]
    assert point == expected
    assert point.far_achieved <= 1e-3 and point.tar > 0.5
    assert point.tar <= 3494 / 3500  # the six missed genuine pairs are rejected
    assert report.accuracy <= 1 - 12 / 7000 + 1e-9  # and all twelve misses are errors


def test_missed_faces_can_count_as_rejections_instead_of_false_accepts():
    # 1,000 impostors with 5 misses: as false accepts they exhaust FAR 1e-3 (1 allowed)...
    rng = np.random.default_rng(0)
    impostors = rng.uniform(-1, 0.5, 1000)
    impostors[:5] = np.nan
    genuine = np.array([0.9, 0.8, np.nan, 0.7])
    scores = np.concatenate([genuine, impostors])
    same = np.arange(scores.size) < genuine.size
    harsh = tar_at_far(scores, same, [1e-3])[0]
    assert harsh.threshold == math.inf and harsh.tar == 0.0
    # ...as rejections they cost only the genuine pair they belong to.
    kind = tar_at_far(missed_as_rejected(scores), same, [1e-3])[0]
    assert kind.tar == 0.75 and kind.far_achieved <= 1e-3
