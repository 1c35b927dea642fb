"""Open-set identification metrics (numpy only, plus pydantic for the reports).

Open-set identification
    A gallery of enrolled identities (one or more L2-normalised embeddings each) and probes,
    each scored against every gallery row by cosine; a probe's top score and top identity
    decide. *Mated* probes have their identity in the gallery, *non-mated* ones do not.

    - rank-1 = mated probes whose top identity is theirs / mated probes.
    - FPIR(t) = non-mated probes with top score >= t / non-mated probes.
    - DIR at FPIR f = mated probes whose top identity is theirs AND top score >= t_f / mated
      probes, with t_f = `threshold_at_far(non-mated top scores, f)`.
    - A NaN probe row (no face) is a miss when mated and a false alarm at every threshold when
      non-mated. A NaN gallery row (failed enrolment) still counts its identity as enrolled
      but can never be the top match, so that identity's probes are misses.

    Rates below what the probe counts can show are flagged as `training.evaluation` flags
    FARs (``supported``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from training.evaluation import (
    REPORT_CONFIG,
    accept_rate,
    check_rate,
    needed_count,
    threshold_at_far,
)

FPIR_TARGETS = (0.01, 0.1)


class DirAtFpir(BaseModel):
    """DIR at one FPIR target; `fpir_achieved` is the FPIR observed at `threshold`."""

    model_config = REPORT_CONFIG

    fpir: float
    dir: float
    threshold: float
    fpir_achieved: float
    n_non_mated: int
    n_non_mated_needed: int  # ceil(1/fpir)
    supported: bool


class OpenSetReport(BaseModel):
    model_config = REPORT_CONFIG

    n_gallery: int
    n_gallery_identities: int
    n_mated: int
    n_non_mated: int
    n_missing: int  # probes with no face (NaN row): misses or false alarms
    n_missing_gallery: int
    rank1: float
    dir_at_fpir: list[DirAtFpir]


def _check_embeddings(x: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 rows and which rows are missing (any NaN); present rows must be unit length,
    because cosine similarity is computed as a dot product."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, dim), got shape {x.shape}")
    missing = np.isnan(x).any(axis=1)
    norms = np.linalg.norm(x[~missing], axis=1)
    if norms.size and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(
            f"{what} rows must be L2-normalised (norms {norms.min():.4g}..{norms.max():.4g})"
        )
    return x, missing


def _top_matches(
    gallery: np.ndarray, gallery_missing: np.ndarray, probes: np.ndarray, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's best gallery row and its score (-inf when no gallery row is usable),
    computed in blocks of probes to bound memory."""
    index = np.zeros(len(probes), dtype=np.int64)
    score = np.full(len(probes), -np.inf)
    usable = np.flatnonzero(~gallery_missing)
    if usable.size == 0:
        return index, score
    rows = gallery[usable]
    for start in range(0, len(probes), block):
        similarity = np.nan_to_num(probes[start : start + block], nan=0.0) @ rows.T
        best = similarity.argmax(axis=1)  # first maximum on a tie
        index[start : start + block] = usable[best]
        score[start : start + block] = similarity[np.arange(len(best)), best]
    return index, score


def open_set_report(
    gallery: np.ndarray,
    gallery_ids: Sequence[str] | np.ndarray,
    probes: np.ndarray,
    probe_ids: Sequence[str] | np.ndarray,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
) -> OpenSetReport:
    """Rank-1 accuracy on mated probes and DIR at each FPIR target (definitions and the NaN
    rule in the module docstring). `gallery` (G, d) and `probes` (Q, d) hold L2-normalised
    rows; NaN rows are missing faces."""
    gallery, gallery_missing = _check_embeddings(gallery, "gallery")
    probes, probe_missing = _check_embeddings(probes, "probes")
    gallery_ids = np.asarray(gallery_ids)
    probe_ids = np.asarray(probe_ids)
    if gallery_ids.shape != (len(gallery),) or probe_ids.shape != (len(probes),):
        raise ValueError("need one identity per gallery row and per probe row")
    if gallery.shape[1] != probes.shape[1]:
        raise ValueError(f"gallery dim {gallery.shape[1]} != probe dim {probes.shape[1]}")
    mated = np.isin(probe_ids, gallery_ids)
    n_mated, n_non_mated = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_non_mated == 0:
        raise ValueError(
            f"open-set evaluation needs mated and non-mated probes, got {n_mated} and {n_non_mated}"
        )
    best, top_score = _top_matches(gallery, gallery_missing, probes)
    # A probe without a face identifies nobody (a miss) and, being NaN, is a false alarm at
    # any threshold in threshold_at_far.
    top_score[probe_missing] = np.nan
    correct = (gallery_ids[best] == probe_ids) & ~probe_missing & np.isfinite(top_score)
    non_mated_top = top_score[~mated]
    points = []
    for target in fpir_targets:
        check_rate(target, "FPIR")
        threshold = threshold_at_far(non_mated_top, target)
        hits = correct[mated] & (top_score[mated] >= threshold)
        needed = needed_count(target)
        points.append(
            DirAtFpir(
                fpir=target,
                dir=float(hits.mean()),
                threshold=threshold,
                fpir_achieved=accept_rate(non_mated_top, threshold),
                n_non_mated=n_non_mated,
                n_non_mated_needed=needed,
                supported=n_non_mated >= needed,
            )
        )
    return OpenSetReport(
        n_gallery=len(gallery),
        n_gallery_identities=len(np.unique(gallery_ids)),
        n_mated=n_mated,
        n_non_mated=n_non_mated,
        n_missing=int(probe_missing.sum()),
        n_missing_gallery=int(gallery_missing.sum()),
        rank1=float(correct[mated].mean()),
        dir_at_fpir=points,
    )


def split_open_set(
    ids: Sequence[str], paths: Sequence[str], known_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices, probe indices) into `ids`/`paths`, split by identity.

    round(known_fraction * identities) identities, drawn with `seed` from the sorted list, are
    known: each enrols its first image by sorted path, and its other images are mated probes.
    Every image of the other identities is a non-mated probe. Indices come back ascending.
    """
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
    if not 0 <= known_fraction <= 1:
        raise ValueError(f"known_fraction must be in [0, 1], got {known_fraction}")
    identities = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(identities))
    known = {identities[i] for i in order[: round(known_fraction * len(identities))]}
    first: dict[str, int] = {}
    for i in sorted(range(len(paths)), key=lambda i: (paths[i], i)):
        if ids[i] in known:
            first.setdefault(ids[i], i)
    gallery = np.array(sorted(first.values()), dtype=np.int64)
    probe = np.setdiff1d(np.arange(len(ids), dtype=np.int64), gallery)
    return gallery, probe
