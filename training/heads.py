"""Softmax-family heads: embeddings and labels to the logits that go into cross-entropy.

``build_head(name, in_features, out_features, **hparams)`` returns one of the heads below. Each
has a ``weight`` parameter of shape ``(out_features, in_features)`` (row ``j`` is the class
weight ``W_j``) and ``forward(embeddings, labels) -> logits`` of shape ``(N, out_features)``.
``θ_j`` is the angle between the embedding ``x`` and ``W_j``; ``y`` is the sample's label.

==================  ==============================  ====================  ========================
name                target logit ``f_y``            other logits ``f_j``  defaults
==================  ==============================  ====================  ========================
softmax             ``W_yᵀx + b_y``                 ``W_jᵀx + b_j``       (has a bias)
wnorm_softmax       ``‖x‖ cos θ_y``                 ``‖x‖ cos θ_j``       ‖W‖=1, no bias
lsoftmax            ``‖W_y‖‖x‖ ψ_λ(θ_y)``           ``W_jᵀx``             m=4, λ annealed
sphereface          ``‖x‖ ψ_λ(θ_y)``                ``‖x‖ cos θ_j``       m=4, λ 1000 → 5
fnorm_sphereface    ``s ψ(θ_y)``                    ``s cos θ_j``         s=64, m=4
cosface             ``s (cos θ_y − m)``             ``s cos θ_j``         s=30, m=0.35
arcface             ``s cos(θ_y + m)`` (†)          ``s cos θ_j``         s=64, m=0.5
combined            ``s (ψ_{m1,m2}(θ_y) − m3)`` (‡) ``s cos θ_j``         s=64, m1=1, m2=0.3, m3=0.2
==================  ==============================  ====================  ========================

Margins change the target logit only: the other logits are exactly the plain ones.

The margin functions of cos θ (ψ, ArcFace's and the combined margin, with their edge cases)
are in ``training/margins.py``; a head is the classifier weight plus one of them.

λ annealing (``lsoftmax``, ``sphereface``) blends the plain target logit in::

    ψ_λ(θ) = (λ cos θ + ψ(θ)) / (1 + λ)
    λ(t)   = max(λ_min, λ_base · (1 + γ t)^(−power))       t = training iterations so far

with defaults ``lambda_base=1000``, ``lambda_gamma=0.12``, ``lambda_power=1`` (SphereFace's
schedule) and ``lambda_min`` from :func:`default_lambda_min`: 5 for m=4 (SphereFace), and for
smaller m the floor that gives the same small-angle curvature, so every m ends as hard as the
published m=4, λ=5 setting (see that function). The state is three buffers, ``iteration``,
``lambda_value`` and ``annealing``, so ``state_dict()`` resumes it exactly:

* ``head.lambda_`` is the λ the next forward uses. Every forward in training mode uses it and
  then advances ``iteration`` by one; while annealing, λ then follows the schedule at the new
  iteration. Forwards in eval mode change nothing.
* Assigning ``head.lambda_ = v`` pins λ at ``v`` and stops annealing; ``iteration`` keeps
  counting. ``head.anneal = True`` resumes the schedule at the current iteration (λ jumps to
  ``λ(iteration)``). ``anneal=False`` at construction starts pinned at ``lambda_min``.

Numerics. Every head casts its inputs to float32 and runs with autocast disabled, so mixed
precision cannot degrade the margin arithmetic and the logits are always float32. Cosines are
clamped to [−1, 1] before any margin function, and nothing divides by sin θ or by an
unfloored norm, so forward and backward stay finite at cos θ = ±1. Norms use an epsilon floor
(1e-12, as ``F.normalize``): a zero embedding gives finite logits and a finite float32
gradient, though a large one (the direction of a zero vector is undefined; the gain is 1/ε),
which does not fit in float16. Near θ = 0 and θ = π a float32 cosine resolves the angle only
to about √(2ε) ≈ 5e-4 rad, so the arccos/sin-based margins (arcface, combined) are accurate to
about ``s · 5e-4`` there; the ψ margins are polynomials in cos θ and have no such loss.

One training-mode forward is one iteration of the λ schedule: with gradient accumulation or
several forwards per step, pin λ and set it yourself (``head.lambda_ = head.schedule(step)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.margins import (
    annealed_lambda,
    arcface_margin,
    combined_margin,
    default_lambda_min,
    psi,
)
from training.registry import Registry

NORM_EPS = 1e-12  # floor under vector norms: a zero vector normalises to zero, not NaN


# -- heads ----------------------------------------------------------------------------------


HEADS: Registry[Head] = Registry("head")


class Head(nn.Module):
    """Common part: the ``weight`` parameter, input checks, float32 without autocast."""

    normalises_weight = True

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be ≥ 1, got {in_features}, {out_features}"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        if self.normalises_weight:
            nn.init.normal_(self.weight, std=0.01)  # only the directions matter
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.in_features:
            raise ValueError(
                f"embeddings must be (N, {self.in_features}), got {tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"labels must be (N,) = {tuple(embeddings.shape[:1])}, got {tuple(labels.shape)}"
            )
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.logits(embeddings.float(), self.weight.float(), labels.long())

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _with_target(plain: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """``plain`` with each row's label column replaced by ``target`` (others untouched)."""
    return plain.scatter(1, labels[:, None], target[:, None].to(plain.dtype))


def _normalised_cosines(x: Tensor, w: Tensor) -> Tensor:
    return F.linear(F.normalize(x, dim=1, eps=NORM_EPS), F.normalize(w, dim=1, eps=NORM_EPS))


def _scale(s: float) -> float:
    s = float(s)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale s must be a positive number, got {s}")
    return s


def _integer_m(m: Any) -> int:
    value = float(m)
    if not (math.isfinite(value) and value.is_integer() and value >= 1) or isinstance(m, bool):
        raise ValueError(
            f"m must be an integer ≥ 1 for the ψ margin, got {m!r} "
            "(the 'combined' head takes a real m1)"
        )
    return int(value)


def _non_negative(name: str, value: Any) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return value


@HEADS.register("softmax")
class SoftmaxHead(Head):
    """``W x + b``: the plain fully connected classifier."""

    normalises_weight = False

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.bias = nn.Parameter(torch.empty(self.out_features))
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        return F.linear(x, w, self.bias.float())


@HEADS.register("wnorm_softmax")
class WNormSoftmaxHead(Head):
    """``‖x‖ cos θ_j = x · W_j/‖W_j‖`` (unit weights, no bias)."""

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        return F.linear(x, F.normalize(w, dim=1, eps=NORM_EPS))


class AnnealedPsiHead(Head):
    """ψ margin blended with the plain logit by an annealed λ (state in buffers)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        m: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float | None = None,
        anneal: bool = True,
    ) -> None:
        super().__init__(in_features, out_features)
        self.m = _integer_m(m)
        self.lambda_base = _non_negative("lambda_base", lambda_base)
        self.lambda_gamma = _non_negative("lambda_gamma", lambda_gamma)
        self.lambda_power = _non_negative("lambda_power", lambda_power)
        self.lambda_min = _non_negative(
            "lambda_min", default_lambda_min(self.m) if lambda_min is None else lambda_min
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))
        self.register_buffer("annealing", torch.tensor(bool(anneal)))
        start = self.schedule(0) if anneal else self.lambda_min
        self.register_buffer("lambda_value", torch.tensor(start, dtype=torch.float32))

    def schedule(self, iteration: int) -> float:
        """λ the schedule gives after ``iteration`` training iterations."""
        return annealed_lambda(
            iteration, self.lambda_base, self.lambda_gamma, self.lambda_power, self.lambda_min
        )

    def _scheduled(self) -> Tensor:  # the same on the buffer's device, without a host sync
        t = self.iteration.to(torch.float32)
        value = self.lambda_base * (1.0 + self.lambda_gamma * t) ** (-self.lambda_power)
        return value.clamp_min(self.lambda_min)

    @property
    def lambda_(self) -> float:
        """λ used by the next forward. Assigning pins it (annealing stops)."""
        return float(self.lambda_value)

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        value = _non_negative("lambda_", value)
        with torch.no_grad():
            self.lambda_value.fill_(value)
            self.annealing.fill_(False)

    @property
    def anneal(self) -> bool:
        """Whether λ follows the schedule. Setting True resumes it at the current iteration."""
        return bool(self.annealing)

    @anneal.setter
    def anneal(self, on: bool) -> None:
        with torch.no_grad():
            self.annealing.fill_(bool(on))
            if on:
                self.lambda_value.copy_(self._scheduled())

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        """``(λ cos θ + ψ(θ)) / (1 + λ)`` with the current λ, then advance in training mode."""
        lam = self.lambda_value.detach().clone().to(cos_theta.dtype)  # buffer changes below
        target = (lam * cos_theta + psi(cos_theta, self.m)) / (1.0 + lam)
        if self.training:
            with torch.no_grad():
                self.iteration.add_(1)
                self.lambda_value.copy_(
                    torch.where(self.annealing, self._scheduled(), self.lambda_value)
                )
        return target

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m={self.m}, lambda_base={self.lambda_base}, "
            f"lambda_gamma={self.lambda_gamma}, lambda_power={self.lambda_power}, "
            f"lambda_min={self.lambda_min}"
        )


@HEADS.register("lsoftmax")
class LSoftmaxHead(AnnealedPsiHead):
    """L-Softmax: target ``‖W_y‖‖x‖ ψ_λ(θ_y)``, others ``W_jᵀx``; nothing normalised."""

    normalises_weight = False

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        plain = F.linear(x, w)
        scale = torch.linalg.vector_norm(w, dim=1)[labels] * torch.linalg.vector_norm(x, dim=1)
        cos_y = (plain.gather(1, labels[:, None]).squeeze(1) / scale.clamp_min(NORM_EPS)).clamp(
            -1, 1
        )
        return _with_target(plain, labels, scale * self.margin_cosine(cos_y))


@HEADS.register("sphereface")
class SphereFaceHead(AnnealedPsiHead):
    """A-Softmax: unit weights; target ``‖x‖ ψ_λ(θ_y)``, others ``‖x‖ cos θ_j``."""

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        plain = F.linear(x, F.normalize(w, dim=1, eps=NORM_EPS))
        norm = torch.linalg.vector_norm(x, dim=1)
        cos_y = (plain.gather(1, labels[:, None]).squeeze(1) / norm.clamp_min(NORM_EPS)).clamp(
            -1, 1
        )
        return _with_target(plain, labels, norm * self.margin_cosine(cos_y))


class NormalisedHead(Head):
    """Unit weights and unit embeddings: logits ``s cos θ_j``, target ``s · margin(cos θ_y)``.

    As in InsightFace's arcface_torch, the classifier (the weight, giving cosines) and the
    margin (acting on cosine logits) are separate steps: `margin_logits` takes any (N, C)
    cosine matrix with labels indexing its columns, so a sampled classifier (Partial FC: the
    positive classes plus a sample of the others) can compute its own cosines and reuse every
    margin here unchanged."""

    def __init__(self, in_features: int, out_features: int, *, s: float) -> None:
        super().__init__(in_features, out_features)
        self.s = _scale(s)

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        raise NotImplementedError

    def margin_logits(self, cos: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits with the margin applied to each row's label column."""
        cos_y = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1.0, 1.0)
        return _with_target(self.s * cos, labels, self.s * self.margin_cosine(cos_y))

    def logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        return self.margin_logits(_normalised_cosines(x, w), labels)


@HEADS.register("fnorm_sphereface")
class FNormSphereFaceHead(NormalisedHead):
    """``s ψ(θ_y)`` with integer m (no λ annealing)."""

    def __init__(self, in_features: int, out_features: int, *, s: float = 64.0, m: int = 4) -> None:
        super().__init__(in_features, out_features, s=s)
        self.m = _integer_m(m)

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        return psi(cos_theta, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


@HEADS.register("cosface")
class CosFaceHead(NormalisedHead):
    """AM-Softmax / CosFace / LMCL: ``s (cos θ_y − m)``."""

    def __init__(
        self, in_features: int, out_features: int, *, s: float = 30.0, m: float = 0.35
    ) -> None:
        super().__init__(in_features, out_features, s=s)
        self.m = _non_negative("m", m)

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        return cos_theta - self.m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


@HEADS.register("arcface")
class ArcFaceHead(NormalisedHead):
    """``s cos(θ_y + m)``, InsightFace's ``cos θ − m sin m`` past θ = π − m (see module doc)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, s=s)
        self.m = _non_negative("m", m)
        if self.m > math.pi / 2:
            raise ValueError(f"ArcFace margin m must be ≤ π/2, got {self.m}")
        self.easy_margin = bool(easy_margin)

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        return arcface_margin(cos_theta, self.m, self.easy_margin)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}"


@HEADS.register("combined")
class CombinedMarginHead(NormalisedHead):
    """``s (ψ_{m1,m2}(θ_y) − m3)``: SphereFace, ArcFace and CosFace margins at once."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
    ) -> None:
        super().__init__(in_features, out_features, s=s)
        self.m1 = float(m1)
        if not (math.isfinite(self.m1) and self.m1 >= 1):
            raise ValueError(f"m1 must be a finite number ≥ 1, got {m1}")
        self.m2 = _non_negative("m2", m2)
        self.m3 = _non_negative("m3", m3)

    def margin_cosine(self, cos_theta: Tensor) -> Tensor:
        return combined_margin(cos_theta, self.m1, self.m2, self.m3)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


HEAD_NAMES: tuple[str, ...] = HEADS.names


def head_hparams(name: str) -> tuple[str, ...]:
    """The hyper-parameter names a head accepts."""
    return HEADS.entry(name).hparams


def build_head(name: str, in_features: int, out_features: int, **hparams: Any) -> Head:
    """The head called ``name`` (one of :data:`HEAD_NAMES`, case-insensitive, ``-`` or ``_``)."""
    return HEADS.build(name, int(in_features), int(out_features), **hparams)
