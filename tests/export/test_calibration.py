"""Threshold calibration on known scores: which FARs the data supports, and what they give."""

from __future__ import annotations

import numpy as np
import pytest

from export.calibration import all_pair_scores, calibration_from_scores


def unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_all_pairs_split_by_identity_and_skip_missing_faces():
    embeddings = unit([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [0, 1]])
    embeddings = np.vstack([embeddings, np.full((1, 2), np.nan, np.float32)])
    genuine, impostor, missing = all_pair_scores(embeddings, ["a", "a", "b", "b", "b", "b"])
    assert missing == 1
    assert genuine.size == 1 + 3  # C(2,2) + C(3,2); the faceless 'b' image pairs with nobody
    assert impostor.size == 2 * 3
    assert genuine.min() > 0.9 and impostor.max() < 0.2


def test_a_far_is_calibrated_only_with_enough_impostors():
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.0, 0.1, 2_000)
    genuine = rng.normal(0.6, 0.1, 500)
    result = calibration_from_scores(genuine, impostor, "synthetic", "test", 100, 2)
    assert [p.far for p in result.operating_points] == [1e-2]  # 20 false accepts at 1e-2
    assert result.unsupported_fars == [1e-3, 1e-4]  # 2 and 0.2: noise, not a threshold
    (point,) = result.operating_points
    assert point.far_achieved == np.mean(impostor >= point.threshold) <= 1e-2
    assert point.tar == np.mean(genuine >= point.threshold)
    # The threshold is the tightest one: one step lower lets too many impostors in.
    assert np.mean(impostor >= np.nextafter(np.sort(impostor)[-21], -1)) > 1e-2
    assert 0.0 <= result.eer < 0.01 and result.n_images_without_face == 2


def test_more_data_calibrates_stricter_points():
    rng = np.random.default_rng(1)
    result = calibration_from_scores(
        rng.normal(0.6, 0.1, 1_000), rng.normal(0, 0.1, 200_000), "synthetic", "test", 0, 0
    )
    thresholds = [p.threshold for p in result.operating_points]
    assert [p.far for p in result.operating_points] == [1e-2, 1e-3, 1e-4]
    assert thresholds == sorted(thresholds)  # stricter FAR, higher threshold
    tars = [p.tar for p in result.operating_points]
    assert tars == sorted(tars, reverse=True)


def test_calibration_needs_both_kinds_of_pair():
    with pytest.raises(ValueError, match="genuine and impostor"):
        calibration_from_scores(np.array([0.5]), np.array([]), "x", "x", 0, 0)


def test_the_far_curve_spans_what_the_impostors_support_and_is_read_between_its_points():
    from service.vision.contract import ModelContract

    rng = np.random.default_rng(2)
    impostor = rng.normal(0, 0.1, 200_000)
    result = calibration_from_scores(
        rng.normal(0.6, 0.1, 1_000), impostor, "synthetic", "test", 0, 0
    )
    fars = [p.far for p in result.far_curve]
    assert fars[0] == pytest.approx(1e-1) and fars == sorted(fars, reverse=True)
    assert fars[-1] * impostor.size >= 10 > fars[-1] * 10 ** (-1 / 4) * impostor.size
    thresholds = [p.threshold for p in result.far_curve]
    assert thresholds == sorted(thresholds)
    for point in result.far_curve:  # each point is an exact threshold of its FAR
        assert np.mean(impostor >= point.threshold) <= point.far

    contract = ModelContract.model_construct(calibration=result)
    exact = {p.far: p.threshold for p in result.operating_points}
    assert contract.threshold_on_curve(1e-3) == exact[1e-3]
    between = contract.threshold_on_curve(2e-4)
    assert exact[1e-3] < between < exact[1e-4]
    # Interpolated, it stays close to what the impostors say at that FAR.
    assert abs(np.mean(impostor >= between) - 2e-4) < 1e-4
    assert contract.far_on_curve(between) == pytest.approx(2e-4, rel=1e-6)
    assert contract.threshold_on_curve(0.5) is None  # outside the curve
    assert contract.threshold_on_curve(fars[-1] / 10) is None
    assert contract.strictest_far == fars[-1]
