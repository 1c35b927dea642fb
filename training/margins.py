"""Margin functions on cos θ: what each margin head does to its target logit.

They take cosines and return the target's margin-applied cosine, as arcface_torch's
CombinedMarginLoss acts on cosine logits apart from the classifier that owns the weights
(``training/heads.py``).

ψ, the multiplicative angular margin (integer ``m ≥ 1``)::

    ψ(θ) = (−1)^k cos(mθ) − 2k   for θ ∈ [kπ/m, (k+1)π/m],  k = 0 … m−1

It is continuous, decreasing on [0, π] (from 1 to 1 − 2m) and never above cos θ. It is
computed from ``c = cos θ`` alone: ``cos(mθ)`` by the Chebyshev recursion
``T_n(c) = 2c T_{n−1}(c) − T_{n−2}(c)`` and ``k`` by counting the thresholds
``cos(jπ/m)`` (j = 1 … m−1) that ``c`` lies below, so no arccos is taken and the gradient is a
polynomial in ``c`` (finite at ``c = ±1``).

(†) ArcFace's corner. ``cos(θ + m)`` increases again once ``θ > π − m``. There the head uses
InsightFace's substitute ``cos θ − m sin m`` (an additive, CosFace-like penalty), i.e. the
target is ``cos(θ + m)`` where ``cos θ > cos(π − m)`` and ``cos θ − m sin m`` elsewhere. At
the switch the value steps *down* (from −1 to ``−cos m − m sin m``), so the target is
monotonically decreasing in θ on [0, π] for ``0 ≤ m ≤ π/2`` (the accepted range).
``cos(θ + m)`` itself is computed as ``cos θ cos m − sin θ sin m`` (no arccos; m=0 is exactly
the plain logit). ``easy_margin=True`` instead applies the margin only where ``cos θ > 0`` and
leaves ``cos θ`` elsewhere; that variant is *not* monotonic (it steps up by ``sin m`` at
θ = π/2) and is offered only for compatibility.

(‡) The combined margin ``cos(m1 θ + m2) − m3`` accepts any real ``m1 ≥ 1``, ``m2 ≥ 0``,
``m3 ≥ 0``. ``cos(m1 θ + m2)`` stops decreasing once ``φ = m1 θ + m2`` passes π, so the head
uses the same piecewise extension as ψ, written in φ::

    ψ_{m1,m2}(θ) = (−1)^k cos(φ) − 2k,   k = ⌊φ / π⌋

which is continuous and decreasing for every real m1, and is exactly ψ for integer m1 with
m2 = 0 (computed then by the Chebyshev route above, so ``combined(m1=4, m2=0, m3=0)`` equals
``fnorm_sphereface(m=4)``). Otherwise θ = arccos(c) with c clamped to ``[−1 + ε, 1 − ε]``
(ε = float32 epsilon), which keeps the arccos gradient finite at c = ±1. For m1 = 1 the
combined head equals ArcFace for θ ≤ π − m2 and differs only in the corner, where both are
monotonic (the combined extension is continuous; ArcFace keeps InsightFace's step).

Numerics: cosines are clamped to [−1, 1] first and nothing divides by sin θ, so values and
gradients stay finite at cos θ = ±1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SIN2_EPS = 1e-12  # floor under sin²θ before the square root (ArcFace)
ACOS_EPS = float(torch.finfo(torch.float32).eps)  # keeps arccos away from ±1 (combined)

# SphereFace's small-angle curvature at m=4, λ=5: (λ + m²) / (1 + λ) = 21 / 6.
_REFERENCE_CURVATURE = (5.0 + 16.0) / (1.0 + 5.0)


def chebyshev_cos(cos_theta: Tensor, m: int) -> Tensor:
    """``cos(mθ)`` from ``cos θ`` by ``T_n = 2c T_{n−1} − T_{n−2}`` (no arccos)."""
    previous, current = torch.ones_like(cos_theta), cos_theta
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos_theta * current - previous
    return current


def psi(cos_theta: Tensor, m: int) -> Tensor:
    """ψ(θ) = (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m], from ``cos θ`` (integer m ≥ 1).

    k is the number of thresholds ``cos(jπ/m)``, j = 1 … m−1, above ``cos θ``; at a threshold
    both neighbouring pieces agree, so which one is taken does not matter.
    """
    c = cos_theta.clamp(-1.0, 1.0)
    k = torch.zeros_like(c)
    for j in range(1, m):
        k = k + (c < math.cos(j * math.pi / m)).to(c.dtype)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev_cos(c, m) - 2.0 * k


def combined_margin(cos_theta: Tensor, m1: float, m2: float, m3: float) -> Tensor:
    """``ψ_{m1,m2}(θ) − m3``: ``cos(m1 θ + m2) − m3`` extended monotonically past φ = π."""
    if m2 == 0 and float(m1).is_integer():
        return psi(cos_theta, int(m1)) - m3  # no angle needed (includes CosFace at m1 = 1)
    theta = torch.acos(cos_theta.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))
    phi = m1 * theta + m2
    k = torch.floor(phi / math.pi).detach()
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * torch.cos(phi) - 2.0 * k - m3


def arcface_margin(cos_theta: Tensor, m: float, easy_margin: bool = False) -> Tensor:
    """``cos(θ + m)``, with InsightFace's ``cos θ − m sin m`` where θ > π − m (or, with
    ``easy_margin``, ``cos θ`` where θ > π/2)."""
    c = cos_theta.clamp(-1.0, 1.0)
    # (1 − c)(1 + c) loses less than 1 − c² near ±1; the floor keeps sqrt's gradient finite.
    sin_theta = torch.sqrt(((1.0 - c) * (1.0 + c)).clamp_min(SIN2_EPS))
    cos_theta_plus_m = c * math.cos(m) - sin_theta * math.sin(m)
    if easy_margin:
        return torch.where(c > 0, cos_theta_plus_m, c)
    return torch.where(c > math.cos(math.pi - m), cos_theta_plus_m, c - m * math.sin(m))


def default_lambda_min(m: int) -> float:
    """λ floor for the annealed ψ heads: 5 for m=4 (SphereFace's published setting).

    Near θ = 0, ψ_λ(θ) ≈ 1 − θ²/2 · (λ + m²)/(1 + λ). SphereFace's m=4, λ=5 gives curvature
    3.5 (an effective multiplicative margin √3.5 ≈ 1.87); for other m the floor is the λ with
    that same curvature, ``max(0, (m² − 3.5) / 2.5)``: m=1 → 0, m=2 → 0.2, m=3 → 2.2, m=4 → 5.
    """
    r = _REFERENCE_CURVATURE
    return max(0.0, (m * m - r) / (r - 1.0))


def annealed_lambda(
    iteration: int,
    base: float = 1000.0,
    gamma: float = 0.12,
    power: float = 1.0,
    minimum: float = 5.0,
) -> float:
    """SphereFace's schedule ``max(minimum, base · (1 + gamma · iteration)^(−power))``."""
    return max(minimum, base * (1.0 + gamma * iteration) ** (-power))
