"""Ranking subjects for a query: per subject, never per template, under one of two rules.

* `best` (default): a subject scores the cosine of its most similar template, which is
  reported as `template_id`. Robust when a subject's templates vary (pose, age).
* `mean`: a subject scores the cosine to the L2-normalised mean of its templates. Averages
  out noise of single templates; `template_id` is None.

Callers hold the gallery's search lock for reading."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from service.gallery.state import IndexState

# First guess at how many templates to fetch per subject wanted; doubled while short.
TEMPLATES_PER_SUBJECT_GUESS = 4


class MatchRule(StrEnum):
    best = "best"
    mean = "mean"


@dataclass(frozen=True)
class Candidate:
    subject_id: str
    similarity: float  # cosine
    template_id: int | None  # the best-matching template; None under the mean rule


def rank(
    state: IndexState, queries: np.ndarray, top_k: int, rule: MatchRule
) -> list[list[Candidate]]:
    if rule is MatchRule.mean:
        return _by_mean(state, queries, top_k)
    return _by_best(state, queries, top_k)


def _by_best(state: IndexState, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
    results: list[list[Candidate]] = [[] for _ in range(len(queries))]
    wanted = min(top_k, len(state.members))
    ceiling = min(len(state.templates), state.templates.max_k)
    if not wanted:
        return results
    fetch = min(ceiling, top_k * TEMPLATES_PER_SUBJECT_GUESS)
    rows = np.arange(len(queries))
    while rows.size:
        similarities, template_ids = state.templates.search(queries[rows], fetch)
        short = []
        for j, row in enumerate(rows):
            candidates = _best_per_subject(state, similarities[j], template_ids[j], top_k)
            # A few subjects with many templates can fill the whole fetch: fetch more.
            if len(candidates) < wanted and fetch < ceiling:
                short.append(row)
            else:
                results[row] = candidates
        rows = np.array(short, dtype=np.int64)
        fetch = min(ceiling, 2 * fetch)
    return results


def _best_per_subject(
    state: IndexState, similarities: np.ndarray, template_ids: np.ndarray, top_k: int
) -> list[Candidate]:
    found = template_ids >= 0
    similarities, template_ids = similarities[found], template_ids[found]
    codes = state.owner[template_ids]
    # Neighbours come best first, so a subject's first appearance is its best template.
    _, first = np.unique(codes, return_index=True)
    first = np.sort(first)[:top_k]
    return [
        Candidate(state.subject_ids[codes[i]], float(similarities[i]), int(template_ids[i]))
        for i in first
    ]


def _by_mean(state: IndexState, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
    similarities, codes = state.means.search(queries, top_k)
    return [
        [
            Candidate(state.subject_ids[code], float(similarity), None)
            for similarity, code in zip(row_similarities, row_codes, strict=True)
            if code >= 0
        ]
        for row_similarities, row_codes in zip(similarities, codes.tolist(), strict=True)
    ]
