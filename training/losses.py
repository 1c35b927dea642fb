"""Losses on embeddings: triplet (FaceNet, online mining), center (added to a softmax head) and
contrastive. ``build_loss(name, **hparams)`` returns a module called with
``(embeddings (N, d), labels (N,))`` that returns a float32 scalar.

triplet (``margin`` α = 0.2, ``mining`` = ``hard``)
    ``[d(a, p) − d(a, n) + α]₊`` with ``d`` the *squared* Euclidean distance (as in FaceNet)
    between L2-normalised embeddings, so ``d = 2 − 2 cos ∈ [0, 4]`` and α is on that scale.
    The triplets come from the batch (use P×K batches):

    * ``all`` (batch-all): every valid triplet (a ≠ p same label, n another label); the loss is
      the mean over the triplets whose loss is positive (averaging over all valid triplets
      would dilute the few informative ones among the many easy zeros as training progresses).
    * ``hard`` (batch-hard): per anchor, its farthest positive and nearest negative; mean over
      the anchors that have both.
    * ``semihard``: per (anchor, positive) pair, the nearest negative that is farther than the
      positive but within the margin, ``d(a,p) < d(a,n) < d(a,p) + α``; when there is none, the
      hardest (nearest) negative. Mean over the pairs whose anchor has a negative. (TensorFlow
      Addons falls back to the farthest negative instead, which makes such pairs give zero.)

    ``all`` and ``semihard`` build an N×N×N table (2M entries at N = 128): fine for P×K
    batches of a few hundred, not for thousands.

center (``num_classes``, ``feat_dim``, ``alpha`` = 0.5, ``weight`` λ = 0.003)
    ``weight · ½ · mean_i ‖x_i − c_{y_i}‖²`` on the raw (unnormalised) embeddings. The centres
    are a buffer (not parameters, so no optimiser touches them), initialised to zero. After the
    loss is computed, each training-mode forward moves them by Wen et al.'s rule::

        Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j),     c_j ← c_j − α Δc_j

    i.e. ``c_j`` moves toward its batch mean by the fraction ``α n_j / (1 + n_j)``. Classes
    absent from the batch stay put; eval-mode forwards change nothing.

contrastive (``margin`` m = 1.0)
    Over every pair i < j of the batch, with ``y = 1`` for the same label and ``D`` the
    Euclidean distance between L2-normalised embeddings (so m is on the scale [0, 2])::

        L = 1/(2P) Σ_pairs [ y D² + (1 − y) max(0, m − D)² ]

    P being the number of pairs: the notes' ``1/(2N) Σ`` over N pairs (Hadsell et al., Caffe),
    i.e. half the mean over pairs.

A batch with no valid triplet or pair returns a zero that still has a ``grad_fn``, so
``loss.backward()`` works (and gives zero gradients). All arithmetic is float32 with autocast
disabled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.registry import Registry

NORM_EPS = 1e-12  # floor under norms: a zero embedding normalises to zero, not NaN
SQRT_EPS = 1e-12  # floor under D² before the square root (finite gradient at D = 0)
MINING = ("all", "hard", "semihard")

# Traits a loss declares, read by the config and the trainer instead of its name:
#   pk_batches: needs P identities x K images per batch (positives for every anchor), and
#       can train without a head;
#   per_class: keeps state per identity, built with num_classes and feat_dim, and adds to a
#       softmax-family head.
LOSSES: Registry[nn.Module] = Registry("loss", "losses")


def squared_distances(x: Tensor) -> Tensor:
    """All pairwise squared Euclidean distances ``‖x_i − x_j‖²`` (N, N), never negative."""
    squared_norms = x.pow(2).sum(1)
    return (squared_norms[:, None] + squared_norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; 0 (with a grad_fn) where the mask is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def _positive(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def _count(name: str, value: Any) -> int:
    number = float(value)
    if not (number.is_integer() and number >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(number)


@LOSSES.register("triplet", pk_batches=True)
class TripletLoss(nn.Module):
    """FaceNet's triplet loss with batch-all, batch-hard or semi-hard mining (module doc)."""

    def __init__(self, *, margin: float = 0.2, mining: str = "hard") -> None:
        super().__init__()
        self.margin = _positive("margin", margin)
        key = str(mining).strip().lower().replace("-", "").replace("_", "")
        key = key.removeprefix("batch")
        if key not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, got {mining!r}")
        self.mining = key

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1, eps=NORM_EPS)
            d = squared_distances(x)
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            positive, negative = same & ~eye, ~same
            if len(labels) < 2:  # no triplet at all (and nothing to reduce over)
                return _masked_mean(d, positive)
            if self.mining == "all":
                return self._batch_all(d, positive, negative)
            if self.mining == "hard":
                return self._batch_hard(d, positive, negative)
            return self._semi_hard(d, positive, negative)

    def _batch_all(self, d: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        losses = (d[:, :, None] - d[:, None, :] + self.margin).clamp_min(0.0)  # [a, p, n]
        valid = positive[:, :, None] & negative[:, None, :]
        return _masked_mean(losses, valid & (losses > 0))

    def _batch_hard(self, d: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        inf = torch.full_like(d, math.inf)
        farthest_positive = torch.where(positive, d, -inf).amax(1)
        nearest_negative = torch.where(negative, d, inf).amin(1)
        losses = (farthest_positive - nearest_negative + self.margin).clamp_min(0.0)
        return _masked_mean(losses, positive.any(1) & negative.any(1))

    def _semi_hard(self, d: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        d_ap, d_an = d[:, :, None], d[:, None, :]  # [a, p, 1] and [a, 1, n]
        band = negative[:, None, :] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        semi_hard = torch.where(band, d_an, math.inf).amin(2)  # [a, p]
        hardest = torch.where(negative, d, math.inf).amin(1)  # [a]
        chosen = torch.where(band.any(2), semi_hard, hardest[:, None])
        losses = (d - chosen + self.margin).clamp_min(0.0)
        return _masked_mean(losses, positive & negative.any(1)[:, None])

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}"


@LOSSES.register("center", per_class=True)
class CenterLoss(nn.Module):
    """Center loss with centres in a buffer, moved by Wen et al.'s rule (module doc)."""

    centers: Tensor

    def __init__(
        self, *, num_classes: int, feat_dim: int, alpha: float = 0.5, weight: float = 0.003
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 1):
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.weight = float(weight)
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a number ≥ 0, got {weight}")
        shape = (_count("num_classes", num_classes), _count("feat_dim", feat_dim))
        self.register_buffer("centers", torch.zeros(shape))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.float()
            labels = labels.long()
            centers = self.centers[labels].float()  # a copy: the update below cannot touch it
            squared = (x - centers).pow(2).sum(1)
            loss = self.weight * 0.5 * squared.sum() / max(len(labels), 1)
            if self.training:
                self._update(x.detach(), labels)
            return loss

    @torch.no_grad()
    def _update(self, x: Tensor, labels: Tensor) -> None:
        centers = self.centers.float()
        delta = torch.zeros_like(centers).index_add_(0, labels, centers[labels] - x)
        counts = torch.zeros(len(centers), device=x.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float32)
        )
        self.centers.copy_(centers - self.alpha * delta / (1.0 + counts)[:, None])

    def extra_repr(self) -> str:
        classes, dim = self.centers.shape
        return f"num_classes={classes}, feat_dim={dim}, alpha={self.alpha}, weight={self.weight}"


@LOSSES.register("contrastive", pk_batches=True)
class ContrastiveLoss(nn.Module):
    """Contrastive loss over all pairs of the batch (module doc)."""

    def __init__(self, *, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _positive("margin", margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1, eps=NORM_EPS)
            i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=x.device)
            squared = squared_distances(x)[i, j]
            distance = torch.sqrt(squared.clamp_min(SQRT_EPS))
            dissimilar = (self.margin - distance).clamp_min(0.0).pow(2)
            losses = torch.where(labels[i] == labels[j], squared, dissimilar)
            return losses.sum() / (2 * max(len(losses), 1))

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


LOSS_NAMES: tuple[str, ...] = LOSSES.names


def loss_hparams(name: str) -> tuple[str, ...]:
    """The hyper-parameter names a loss accepts."""
    return LOSSES.entry(name).hparams


def build_loss(name: str, **hparams: Any) -> nn.Module:
    """The loss called ``name`` (one of :data:`LOSS_NAMES`, case-insensitive)."""
    return LOSSES.build(name, **hparams)
