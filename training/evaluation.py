"""Face verification metrics. numpy only (plus pydantic for the reports), so export and
serving can reuse them to calibrate thresholds without the training stack. Open-set
identification is `training.open_set`, plots `training.plots`.
reports and matplotlib, imported lazily, for plots), so export and serving can reuse them to
calibrate thresholds without the training stack.

Verification
    Inputs are one similarity score per pair (cosine: higher = more alike) and whether the pair
    shows the same person (genuine) or not (impostor). A pair *matches* when
    ``score >= threshold``.

    - accuracy(t) = (genuine with score >= t + impostors with score < t) / pairs.
    - k-fold accuracy: for each fold, the threshold maximising accuracy on the *other* folds
      (candidates: midpoints between neighbouring distinct scores, plus one threshold below and
      one above them all; ties go to the lowest candidate), applied to the held-out fold. The
      mean and the population std (ddof=0) of the per-fold accuracies are reported.
    - FAR(t) = impostors accepted / impostors; TAR(t) = genuine accepted / genuine;
      FRR = 1 - TAR.
    - ROC: (FAR, TAR) at every distinct score used as threshold, from the strictest
      (threshold +inf) down. AUC: area under it, i.e. the Mann–Whitney probability that a
      genuine pair outscores an impostor pair, ties counting one half.
    - EER: where FAR = FRR on the ROC polyline (linear interpolation between the two operating
      points that bracket the crossing); its threshold is that of the bracketing point nearer
      the crossing (the stricter one on a tie).
    - TAR at FAR f: TAR at `threshold_at_far(impostors, f)`, the smallest threshold whose FAR
      is at most f.

Missing faces (NaN scores): pessimistic, never dropped
    A NaN score means no face was found in one of the images. Such a pair is an error at every
    threshold: a NaN genuine pair is a false reject and a NaN impostor pair a false accept,
    whatever the threshold (as if scored -inf and +inf). So NaN pairs are wrong in every
    accuracy, lower TAR, raise FAR (the ROC starts at FAR = NaN impostors / impostors, not 0),
    and use up the false-accept budget of `threshold_at_far` (which returns +inf when they
    alone exceed it). Threshold *choice* ignores them, since they are wrong at any threshold.
    Reports count them (``n_missing``).

    The exception is a report's TAR at FAR (`verification_report`): there a missed face is a
    rejection (`missed_as_rejected`), as a deployed system treats it (the service answers
    "no face", which accepts nobody): a lost genuine pair lowers TAR, a lost impostor pair is
    not a false accept. Counted pessimistically, a protocol with more misses than its FAR
    budget (CFP: 3,500 impostors, so 3 false accepts at 1e-3) could only ever report TAR 0.

Supported operating points
    With n impostors the only observable FARs are multiples of 1/n; FAR f can be shown only
    when at least one false accept is allowed, i.e. n >= ceil(1/f). Below that the threshold
    sits above every impostor (observed FAR 0) and its TAR says nothing about FAR f: the point
    is still reported (the best available) but with ``supported = False`` and must not be
    quoted as "TAR at FAR f". The same rule applies to FPIR with non-mated probes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

FAR_TARGETS = (1e-2, 1e-3, 1e-4)

# Thresholds can be +-inf (nothing or everything accepted); keep the JSON valid and
# round-trippable by writing them as "Infinity"/"-Infinity" strings.
REPORT_CONFIG = ConfigDict(frozen=True, ser_json_inf_nan="strings")


# --- reports -----------------------------------------------------------------------------


class TarAtFar(BaseModel):
    """TAR at one FAR target. `far_achieved` is the FAR actually observed at `threshold`."""

    model_config = REPORT_CONFIG

    far: float
    tar: float
    threshold: float
    far_achieved: float
    n_impostor: int
    n_impostor_needed: int  # ceil(1/far): impostors needed to show this FAR at all
    supported: bool


class VerificationReport(BaseModel):
    model_config = REPORT_CONFIG

    n_pairs: int
    n_genuine: int
    n_impostor: int
    n_missing: int  # pairs with a NaN score, each counted as an error
    n_missing_genuine: int
    n_missing_impostor: int
    accuracy: float  # mean held-out accuracy over the folds
    accuracy_std: float
    fold_accuracy: list[float]
    fold_threshold: list[float]
    auc: float
    eer: float
    eer_threshold: float
    tar_at_far: list[TarAtFar]


# --- input checks and small helpers ------------------------------------------------------


def check_pairs(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 (NaN = missing) and labels as bool, same length, at least one pair."""
    scores = np.asarray(scores, dtype=np.float64)
    same_in = np.asarray(same)
    if scores.ndim != 1 or same_in.shape != scores.shape:
        raise ValueError(
            f"scores and same must be 1-D of equal length, got {scores.shape} and {same_in.shape}"
        )
    if scores.size == 0:
        raise ValueError("no pairs to evaluate")
    if same_in.dtype != np.bool_ and not np.isin(same_in, (0, 1)).all():
        raise ValueError("same must be boolean (or 0/1)")
    return scores, same_in.astype(bool)


def _check_both_kinds(same: np.ndarray) -> None:
    if same.all() or not same.any():
        raise ValueError("ROC metrics need at least one genuine and one impostor pair")


def _allowed_count(rate: float, n: int) -> int:
    """The largest k <= n with k/n <= rate, robust to floating error in rate*n
    (e.g. 0.29 * 100 = 28.999...)."""
    k = min(n, math.floor(rate * n))
    while k < n and (k + 1) / n <= rate:
        k += 1
    while k > 0 and k / n > rate:
        k -= 1
    return k


def needed_count(rate: float) -> int:
    """ceil(1/rate): the fewest trials that can show a rate of `rate` (one event allowed)."""
    # The tiny shrink keeps 1/1e-3 from becoming 1001 through rounding noise.
    return math.ceil((1.0 / rate) * (1 - 1e-12))


def check_rate(rate: float, what: str) -> None:
    if not 0 < rate <= 1:
        raise ValueError(f"{what} target must be in (0, 1], got {rate}")


# --- accuracy with k folds ---------------------------------------------------------------


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy on these pairs, in O(n log n).

    Candidates: one below every score, the midpoints between neighbouring distinct scores, one
    above every score; ties go to the lowest. NaN pairs are wrong at any threshold, so they
    cannot change the choice and are left out. 0.0 when no score is finite.
    """
    scores, same = check_pairs(scores, same)
    finite = ~np.isnan(scores)
    scores, same = scores[finite], same[finite]
    if scores.size == 0:
        return 0.0
    values, inverse = np.unique(scores, return_inverse=True)
    # genuine_le[i] / impostor_le[i]: pairs scoring <= values[i]
    genuine_le = np.cumsum(np.bincount(inverse, weights=same, minlength=len(values)))
    impostor_le = np.cumsum(np.bincount(inverse, weights=~same, minlength=len(values)))
    n_genuine = same.sum()
    # Candidate 0 accepts everything; candidate i+1 rejects exactly the scores <= values[i].
    correct = np.r_[n_genuine, n_genuine - genuine_le + impostor_le]
    best = int(np.argmax(correct))  # first maximum: the lowest threshold
    if best == 0:
        return float(values[0] - (1.0 + abs(values[0])))
    if best == len(values):
        return float(values[-1] + (1.0 + abs(values[-1])))
    low, high = values[best - 1], values[best]
    middle = low / 2 + high / 2
    # Between neighbouring floats the midpoint can round onto `low`, which would accept it;
    # `high` splits the pairs identically then.
    return float(middle if middle > low else high)


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right at `threshold`; NaN pairs are always wrong."""
    scores, same = check_pairs(scores, same)
    # Comparisons with NaN are False both ways, so a NaN pair is neither a correct accept
    # nor a correct reject.
    correct = np.where(same, scores >= threshold, scores < threshold)
    return float(correct.mean())


def kfold_accuracy(
    scores: np.ndarray, same: np.ndarray, fold: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(mean accuracy, std, per-fold accuracy, per-fold threshold), folds in ascending order.
    Each fold is judged at the threshold that maximises accuracy on all the other folds."""
    scores, same = check_pairs(scores, same)
    fold = np.asarray(fold)
    if fold.shape != scores.shape:
        raise ValueError(f"fold must have shape {scores.shape}, got {fold.shape}")
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {len(folds)}")
    accuracy = np.empty(len(folds))
    threshold = np.empty(len(folds))
    for k, name in enumerate(folds):
        test = fold == name
        threshold[k] = best_threshold(scores[~test], same[~test])
        accuracy[k] = accuracy_at(scores[test], same[test], threshold[k])
    return float(accuracy.mean()), float(accuracy.std()), accuracy, threshold


# --- ROC, AUC, EER -----------------------------------------------------------------------


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact step ROC: (far, tar, thresholds), thresholds descending from +inf (accepts
    no finite score) through every distinct finite score (match if score >= threshold).

    NaN genuine pairs are rejected and NaN impostor pairs accepted at every threshold, so the
    curve starts at FAR = NaN impostors / impostors and TAR stays below 1 when a genuine pair
    is NaN. Consecutive points move up (genuine accepted), right (impostor accepted) or
    diagonally (tied scores), so joining them with lines draws the curve exactly.
    """
    scores, same = check_pairs(scores, same)
    _check_both_kinds(same)
    n_genuine, n_impostor = int(same.sum()), int((~same).sum())
    missing = np.isnan(scores)
    missing_impostor = int((missing & ~same).sum())
    order = np.argsort(-scores[~missing], kind="stable")
    ordered = scores[~missing][order]
    genuine = same[~missing][order]
    true_accepts = np.cumsum(genuine)
    false_accepts = np.cumsum(~genuine)
    # Keep the last position of every run of equal scores: a threshold accepts the whole tie.
    last = np.r_[ordered[1:] != ordered[:-1], True] if ordered.size else np.zeros(0, bool)
    thresholds = np.r_[np.inf, ordered[last]]
    tar = np.r_[0, true_accepts[last]] / n_genuine
    far = (np.r_[0, false_accepts[last]] + missing_impostor) / n_impostor
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC, = P(genuine score > impostor score) + P(tie) / 2, with NaN genuine
    pairs below and NaN impostor pairs above every score (and a NaN against a NaN a loss)."""
    far, tar, _ = roc_curve(scores, same)
    # Close the curve at (0, 0) and (1, 1); by the NaN rule the unreachable stretches, TAR 0
    # below the starting FAR and FAR 1 above the final TAR, add no area.
    x = np.r_[0.0, far, 1.0]
    y = np.r_[0.0, tar, 1.0]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def eer(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold at it). See the module docstring for the definition."""
    far, tar, thresholds = roc_curve(scores, same)
    gap = far - (1 - tar)  # FAR - FRR: never decreases along the curve; 0 or more at its end
    k = int(np.argmax(gap >= 0))
    if k == 0 or gap[k] == 0:
        return float(far[k]), float(thresholds[k])
    w = -gap[k - 1] / (gap[k] - gap[k - 1])
    rate = far[k - 1] + w * (far[k] - far[k - 1])
    nearer = k if abs(gap[k]) < abs(gap[k - 1]) else k - 1
    return float(rate), float(thresholds[nearer])


# --- operating points at a FAR -----------------------------------------------------------


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """The smallest threshold t with FAR(t) = #(impostors >= t) / n <= far.

    FAR only drops just *above* an impostor score, so t is the next representable float above
    the (k+1)-th highest impostor score, k = the most false accepts allowed (largest k with
    k/n <= far). That float is taken in the input's dtype, so a float32 threshold compared
    with float32 scores keeps the guarantee. NaN impostors are false accepts at any threshold
    and use up the budget first: +inf when they alone exceed it (FAR stays above the target
    whatever the threshold); -inf when every impostor may be accepted (far >= 1).
    """
    raw = np.asarray(impostor_scores)
    dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.dtype(np.float64)
    scores = raw.astype(np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("threshold_at_far needs a non-empty 1-D array of impostor scores")
    if not 0 <= far <= 1:
        raise ValueError(f"far must be in [0, 1], got {far}")
    missing = np.isnan(scores)
    allowed = _allowed_count(far, scores.size) - int(missing.sum())
    if allowed < 0:
        return math.inf
    finite = np.sort(scores[~missing])[::-1]
    if allowed >= finite.size:
        return -math.inf
    return float(np.nextafter(dtype.type(finite[allowed]), dtype.type(np.inf)))


def accept_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction accepted at `threshold`, counting NaN as accepted (impostor side)."""
    return float(np.mean(np.isnan(scores) | (scores >= threshold)))


def missed_as_rejected(scores: np.ndarray) -> np.ndarray:
    """Scores where a missed face (NaN) is rejected at every threshold, as a deployed system
    treats it: a lost genuine pair lowers TAR, a lost impostor pair is not a false accept.
    (`tar_at_far` on raw scores counts a lost impostor pair as a false accept instead, which
    is why a protocol with more misses than its FAR budget reports an unreachable threshold.)"""
    raw = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(raw), -np.inf, raw)


def tar_at_far(
    scores: np.ndarray, same: np.ndarray, far_targets: Sequence[float] = FAR_TARGETS
) -> list[TarAtFar]:
    """TAR at each FAR target, with the threshold, the FAR achieved and whether the number of
    impostors supports the target (n_impostor >= ceil(1/far))."""
    raw = np.asarray(scores)
    checked, same = check_pairs(raw, same)
    _check_both_kinds(same)
    # Pass the impostors in their own dtype so float32 scores get a float32-exact threshold.
    impostors = raw[~same] if np.issubdtype(raw.dtype, np.floating) else checked[~same]
    genuine = checked[same]
    points = []
    for target in far_targets:
        check_rate(target, "FAR")
        threshold = threshold_at_far(impostors, target)
        needed = needed_count(target)
        points.append(
            TarAtFar(
                far=target,
                tar=float(np.mean(genuine >= threshold)),  # NaN genuine: never accepted
                threshold=threshold,
                far_achieved=accept_rate(checked[~same], threshold),
                n_impostor=int(impostors.size),
                n_impostor_needed=needed,
                supported=impostors.size >= needed,
            )
        )
    return points


def verification_report(
    scores: np.ndarray,
    same: np.ndarray,
    fold: np.ndarray,
    far_targets: Sequence[float] = FAR_TARGETS,
) -> VerificationReport:
    """Everything above for one protocol: k-fold accuracy, AUC, EER, TAR at FAR (a missed
    face rejected, see the module docstring), counts."""
    checked, same_bool = check_pairs(scores, same)
    mean, std, fold_accuracy, fold_threshold = kfold_accuracy(checked, same_bool, fold)
    rate, rate_threshold = eer(checked, same_bool)
    missing = np.isnan(checked)
    return VerificationReport(
        n_pairs=int(checked.size),
        n_genuine=int(same_bool.sum()),
        n_impostor=int((~same_bool).sum()),
        n_missing=int(missing.sum()),
        n_missing_genuine=int((missing & same_bool).sum()),
        n_missing_impostor=int((missing & ~same_bool).sum()),
        accuracy=mean,
        accuracy_std=std,
        fold_accuracy=fold_accuracy.tolist(),
        fold_threshold=fold_threshold.tolist(),
        auc=roc_auc(checked, same_bool),
        eer=rate,
        eer_threshold=rate_threshold,
        tar_at_far=tar_at_far(missed_as_rejected(checked), same_bool, far_targets),
    )
