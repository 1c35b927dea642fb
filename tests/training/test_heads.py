"""Margin heads: margin-zero equivalences, ψ and the combined/ArcFace extensions, numerical
safety at cos θ = ±1 and under reduced precision, λ annealing state, and a toy optimisation."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from training.heads import HEAD_NAMES, build_head
from training.margins import (
    annealed_lambda,
    arcface_margin,
    chebyshev_cos,
    combined_margin,
    default_lambda_min,
    psi,
)

IN, OUT = 6, 3
MARGIN_HEADS = tuple(n for n in HEAD_NAMES if n not in ("softmax", "wnorm_softmax"))
ANNEALED = ("lsoftmax", "sphereface")
NORMALISED = ("fnorm_sphereface", "cosface", "arcface", "combined")
# Each head's settings that switch its margin off (λ is pinned to 0 for the annealed heads).
NO_MARGIN = {
    "softmax": {},
    "wnorm_softmax": {},
    "lsoftmax": {"m": 1},
    "sphereface": {"m": 1},
    "fnorm_sphereface": {"m": 1},
    "cosface": {"m": 0.0},
    "arcface": {"m": 0.0},
    "combined": {"m1": 1.0, "m2": 0.0, "m3": 0.0},
}
GRID = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_head(name: str, seed: int = 0, **hparams) -> nn.Module:
    torch.manual_seed(seed)
    return build_head(name, IN, OUT, **hparams)


def copy_weights(source: nn.Module, target: nn.Module) -> nn.Module:
    with torch.no_grad():
        target.weight.copy_(source.weight)
    return target


def pin_lambda(head: nn.Module, value: float) -> nn.Module:
    if hasattr(head, "lambda_"):
        head.lambda_ = value
    return head


def batch(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, IN, generator=g), torch.randint(0, OUT, (n,), generator=g)


def plain_reference(name: str, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The unmargined softmax of the head's kind, written out independently."""
    w = head.weight.detach()
    if name == "softmax":
        return x @ w.T + head.bias.detach()
    if name == "lsoftmax":
        return x @ w.T
    if name in ("wnorm_softmax", "sphereface"):
        return x @ (w / w.norm(dim=1, keepdim=True)).T
    return head.s * F.normalize(x, dim=1) @ F.normalize(w, dim=1).T


def unit_weights(head: nn.Module, norms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> nn.Module:
    """Class weights along the first axes: W_j = norms[j] · e_j."""
    with torch.no_grad():
        head.weight.zero_()
        for j, norm in enumerate(norms):
            head.weight[j, j] = norm
    return head


def at_angles(theta: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """Embeddings at angle θ from e_0, in the plane of e_0 and e_{IN−1} (away from W_1, W_2)."""
    x = torch.zeros(len(theta), IN, dtype=torch.float64)
    x[:, 0], x[:, -1] = torch.cos(theta), torch.sin(theta)
    return (norm * x).float()


def target_curve(head: nn.Module, theta: torch.Tensor, norm: float = 1.0) -> torch.Tensor:
    """The label-0 logit of embeddings at angles θ from W_0 = e_0 (eval mode: λ stays put)."""
    head.eval()
    with torch.no_grad():
        return head(at_angles(theta, norm), torch.zeros(len(theta), dtype=torch.long))[:, 0]


def assert_decreasing(values: torch.Tensor, tolerance: float) -> None:
    steps = values[1:] - values[:-1]
    worst = int(steps.argmax())
    assert steps.max() <= tolerance, f"increases by {float(steps[worst])} at grid point {worst}"


def edge_batch(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings exactly parallel and antiparallel to W_y, zero, below the norm floor, large."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    w = head.weight.detach()
    rows = [w[0] * 3, -w[1], torch.zeros_like(w[0]), w[0] * 1e-30, w[1] * 1e4, -w[2] * 7]
    return torch.stack(rows).clone().requires_grad_(True), labels


# -- construction ------------------------------------------------------------------------------


def test_head_names_are_the_issues():
    assert HEAD_NAMES == (
        "softmax",
        "wnorm_softmax",
        "lsoftmax",
        "sphereface",
        "fnorm_sphereface",
        "cosface",
        "arcface",
        "combined",
    )


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_weight_shape_and_bias(name):
    head = build_head(name, 16, 5)
    assert isinstance(head.weight, nn.Parameter) and head.weight.shape == (5, 16)
    parameters = dict(head.named_parameters())
    assert set(parameters) == ({"weight", "bias"} if name == "softmax" else {"weight"})
    logits = head(torch.randn(4, 16), torch.tensor([0, 1, 2, 4]))
    assert logits.shape == (4, 5) and logits.dtype == torch.float32


def test_unknown_head_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown head 'normface'") as error:
        build_head("normface", 8, 2)
    for name in HEAD_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("softmax", {"s": 30.0}, "does not take s"),
        ("arcface", {"margin": 0.5}, "it takes: s, m, easy_margin"),
        ("sphereface", {"m": 2.5}, "integer"),
        ("lsoftmax", {"m": 0}, "integer"),
        ("fnorm_sphereface", {"m": math.nan}, "integer"),
        ("combined", {"m1": 0.9}, "m1"),
        ("combined", {"m2": -0.1}, "m2"),
        ("cosface", {"s": 0.0}, "scale"),
        ("cosface", {"m": -0.35}, "m must"),
        ("arcface", {"m": 2.0}, "π/2"),
        ("sphereface", {"lambda_min": -1.0}, "lambda_min"),
    ],
)
def test_bad_hyper_parameters_are_refused(name, hparams, message):
    with pytest.raises(ValueError, match=message):
        build_head(name, 8, 2, **hparams)


def test_config_style_values_are_accepted():
    # TOML and --head-param give floats: m = 2.0 is the integer margin 2, flags are 0.0/1.0.
    head = build_head("LSoftmax", 8, 2, m=2.0, lambda_min=0.0, anneal=0.0)
    assert head.m == 2 and isinstance(head.m, int) and head.lambda_ == 0.0 and not head.anneal
    assert build_head("arcface", 8, 2, easy_margin=1.0).easy_margin is True
    assert build_head("fnorm-sphereface", 8, 2, s=32).s == 32.0


# -- margin-zero equivalence and "only the target logit changes" -------------------------------


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_without_margin_each_head_is_its_plain_softmax(name):
    head = pin_lambda(make_head(name, **NO_MARGIN[name]), 0.0)
    x, labels = batch()
    x[0] = 0.0  # a zero embedding too
    logits = head(x, labels)
    torch.testing.assert_close(logits, plain_reference(name, head, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ANNEALED)
def test_annealed_heads_are_plain_with_m1_and_no_lambda_or_with_a_huge_lambda(name):
    x, labels = batch()
    plain = plain_reference(name, make_head(name), x)
    torch.testing.assert_close(pin_lambda(make_head(name, m=1), 0.0)(x, labels), plain)
    huge = pin_lambda(make_head(name, m=4), 1e9)(x, labels)  # λ → ∞ blends any margin away
    torch.testing.assert_close(huge, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MARGIN_HEADS)
@pytest.mark.parametrize("lam", [None, 0.0])
def test_margin_lowers_the_target_logit_only(name, lam):
    margin = make_head(name)
    if lam is not None:
        pin_lambda(margin, lam)
    plain = pin_lambda(copy_weights(margin, make_head(name, seed=5, **NO_MARGIN[name])), 0.0)
    x, labels = batch(64)
    with torch.no_grad():
        x[:3] = margin.weight[labels[:3]] * 2.5  # cos θ_y = 1
        x[3:6] = -margin.weight[labels[3:6]]  # cos θ_y = −1
        x[6:9] = margin.weight[(labels[6:9] + 1) % OUT]  # cos θ_j = 1 for some j ≠ y
    with_margin, without = margin(x, labels), plain(x, labels)
    target = F.one_hot(labels, OUT).bool()
    assert torch.equal(with_margin[~target], without[~target])
    reference = plain_reference(name, margin, x)
    torch.testing.assert_close(with_margin[~target], reference[~target], rtol=1e-5, atol=1e-5)
    assert (with_margin[target] <= without[target] + 1e-5 * without[target].abs()).all()
    assert (with_margin[target] < without[target]).sum() >= 32  # the margin does bite


def test_heads_equal_their_special_cases_of_the_combined_margin():
    x, labels = batch(32)
    combined = make_head("combined", s=40.0, m1=4.0, m2=0.0, m3=0.0)
    sphere = copy_weights(combined, make_head("fnorm_sphereface", seed=3, s=40.0, m=4))
    assert torch.equal(combined(x, labels), sphere(x, labels))
    combined = make_head("combined", s=30.0, m1=1.0, m2=0.0, m3=0.35)
    cosface = copy_weights(combined, make_head("cosface", seed=3, s=30.0, m=0.35))
    assert torch.equal(combined(x, labels), cosface(x, labels))


def test_combined_with_m1_one_is_arcface_before_the_corner():
    # A float32 cosine resolves θ only to about √(2ε) ≈ 5e-4 rad near θ = 0, which moves an
    # angular-margin logit by up to s·sin(m)·5e-4 ≈ 0.015: hence atol 0.02.
    m, s, grid = 0.5, 64.0, GRID
    theta = grid[grid <= math.pi - m - 1e-3]
    arcface = target_curve(unit_weights(make_head("arcface", s=s, m=m)), theta)
    combined = target_curve(unit_weights(make_head("combined", s=s, m1=1.0, m2=m, m3=0.0)), theta)
    torch.testing.assert_close(combined, arcface, rtol=0, atol=2e-2)
    torch.testing.assert_close(combined, s * torch.cos(theta + m).float(), rtol=0, atol=2e-2)


# -- ψ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_is_the_piecewise_margin_continuous_decreasing_and_below_cos(m):
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    values = psi(torch.cos(theta), m)
    k = torch.clamp(torch.floor(m * theta / math.pi), max=m - 1)
    expected = (-1.0) ** k * torch.cos(m * theta) - 2.0 * k
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-9)
    assert_decreasing(values, 1e-12)
    step = float(theta[1] - theta[0])
    assert (values[1:] - values[:-1]).abs().max() <= m * step * (1 + 1e-6)  # no jumps
    assert (values <= torch.cos(theta) + 1e-12).all()
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1.0 - 2 * m)
    # At the piece boundaries θ = jπ/m both neighbouring pieces give 1 − 2j.
    boundaries = torch.cos(torch.arange(1, m, dtype=torch.float64) * math.pi / m)
    expected = 1.0 - 2.0 * torch.arange(1, m, dtype=torch.float64)
    torch.testing.assert_close(psi(boundaries, m), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4, 5])
def test_chebyshev_recursion_is_cos_m_theta(m):
    theta = torch.linspace(0.0, math.pi, 101, dtype=torch.float64)
    torch.testing.assert_close(chebyshev_cos(torch.cos(theta), m), torch.cos(m * theta))


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_gradient_is_finite_at_plus_and_minus_one(m):
    c = torch.tensor([1.0, -1.0, 1.0 + 1e-6], requires_grad=True)
    psi(c, m).sum().backward()
    # dψ/dc = (−1)^k T_m'(c) = m² at both ends; outside [−1, 1] the clamp stops it.
    torch.testing.assert_close(c.grad, torch.tensor([m * m, m * m, 0.0]))


# -- ArcFace's corner and the combined margin for real m1 --------------------------------------


@pytest.mark.parametrize("m", [0.1, 0.5, 0.8, math.pi / 2])
def test_arcface_target_decreases_in_theta_on_zero_to_pi(m):
    assert_decreasing(target_curve(unit_weights(make_head("arcface", m=m)), GRID), 64 * 1e-5)


def test_arcface_uses_cos_theta_minus_m_sin_m_past_pi_minus_m():
    m, s, grid = 0.5, 64.0, GRID
    values = target_curve(unit_weights(make_head("arcface", s=s, m=m)), grid)
    before, after = grid < math.pi - m - 1e-4, grid > math.pi - m + 1e-4
    expected = s * torch.cos(grid[before] + m).float()
    torch.testing.assert_close(values[before], expected, rtol=0, atol=2e-2)
    corner = s * (torch.cos(grid[after]) - m * math.sin(m)).float()
    torch.testing.assert_close(values[after], corner, rtol=0, atol=1e-3)


def test_arcface_easy_margin_keeps_the_plain_logit_past_ninety_degrees():
    m, s, grid = 0.5, 64.0, GRID
    values = target_curve(unit_weights(make_head("arcface", s=s, m=m, easy_margin=True)), grid)
    obtuse, acute = grid > math.pi / 2 + 1e-4, grid < math.pi / 2 - 1e-4
    expected = s * torch.cos(grid[obtuse]).float()
    torch.testing.assert_close(values[obtuse], expected, rtol=0, atol=1e-4)
    expected = s * torch.cos(grid[acute] + m).float()
    torch.testing.assert_close(values[acute], expected, rtol=0, atol=2e-2)
    # As documented, this variant steps up by s·sin m at θ = π/2: it is not monotonic.
    assert (values[1:] - values[:-1]).max() == pytest.approx(s * math.sin(m), rel=1e-2)


def test_arcface_margin_zero_is_exactly_the_cosine():
    c = torch.linspace(-1.0, 1.0, 1001)
    assert torch.equal(arcface_margin(c, 0.0), c)


def test_combined_with_non_integer_m1_follows_its_formula_and_extension():
    s, m1, m2, m3 = 64.0, 1.35, 0.25, 0.1
    values = target_curve(unit_weights(make_head("combined", s=s, m1=m1, m2=m2, m3=m3)), GRID)
    phi = m1 * GRID + m2
    k = torch.floor(phi / math.pi)
    expected = s * ((-1.0) ** k * torch.cos(phi) - 2.0 * k - m3)
    assert (phi > math.pi).any()  # the extension is exercised
    # atol: float32 cosines resolve θ to ≈ 5e-4 rad at both ends (see the ArcFace comparison).
    torch.testing.assert_close(values, expected.float(), rtol=0, atol=5e-2)
    assert_decreasing(values, s * 1e-5)
    step = float(GRID[1] - GRID[0])
    assert (values[1:] - values[:-1]).abs().max() <= s * m1 * step * 1.01  # continuous
    assert (values <= s * torch.cos(GRID).float() + 1e-4).all()


@settings(max_examples=40, deadline=None)
@given(m1=st.floats(1.0, 4.0), m2=st.floats(0.0, 1.5), m3=st.floats(0.0, 0.5))
def test_combined_margin_is_monotonic_and_below_cos_for_any_margins(m1, m2, m3):
    c = torch.cos(GRID).float()
    values = combined_margin(c, m1, m2, m3)
    assert torch.isfinite(values).all()
    assert_decreasing(values, 1e-5)
    assert (values <= c + 1e-6).all()
    ends = torch.tensor([1.0, -1.0], requires_grad=True)
    combined_margin(ends, m1, m2, m3).sum().backward()
    assert torch.isfinite(ends.grad).all()


@pytest.mark.parametrize("name", MARGIN_HEADS)
def test_target_logit_decreases_in_theta_for_default_margins(name):
    head = pin_lambda(unit_weights(make_head(name)), 0.0)
    values = target_curve(head, GRID, norm=2.0)
    assert_decreasing(values, 1e-4 * float(values.abs().max()))


@pytest.mark.parametrize("name", ANNEALED)
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_annealed_target_is_the_lambda_blend(name, m):
    head = make_head(name, m=m)
    unit_weights(head, norms=(2.0, 1.0, 1.0))
    head.lambda_ = 2.5
    norm, theta = 3.0, torch.linspace(0.0, math.pi, 501, dtype=torch.float64)
    w_norm = 2.0 if name == "lsoftmax" else 1.0  # SphereFace normalises W, L-Softmax does not
    c = torch.cos(theta)
    expected = w_norm * norm * (2.5 * c + psi(c, m)) / 3.5
    torch.testing.assert_close(target_curve(head, theta, norm), expected.float(), rtol=0, atol=1e-4)


# -- numerical safety --------------------------------------------------------------------------


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("lam", [None, 0.0])
def test_finite_forward_and_backward_at_cos_plus_minus_one_and_zero_norm(name, lam):
    head = make_head(name)
    if lam is not None:
        pin_lambda(head, lam)
    head.train()
    x, labels = edge_batch(head)
    logits = head(x, labels)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", NORMALISED)
def test_normalised_heads_at_the_extremes(name):
    head = make_head(name)
    x, labels = edge_batch(head)
    with torch.no_grad():
        logits = head(x, labels)

    def expected(cos: float) -> float:
        return head.s * float(head.margin_cosine(torch.tensor(cos)))

    # Exactly parallel (3 or 10⁴ times W_y) and antiparallel.
    assert float(logits[0, 0]) == pytest.approx(expected(1.0), abs=1e-4)
    assert float(logits[4, 1]) == pytest.approx(expected(1.0), abs=1e-4)
    assert float(logits[1, 1]) == pytest.approx(expected(-1.0), abs=1e-4)
    # A zero embedding (and one below the norm floor) has cos θ = 0 with every class.
    for row in (2, 3):
        others = torch.arange(OUT) != labels[row]
        assert logits[row, others].abs().max() < 1e-4
        assert float(logits[row, labels[row]]) == pytest.approx(expected(0.0), abs=1e-4)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_gradient_reaches_embeddings_and_weights(name):
    head = make_head(name)
    x, labels = batch()
    x.requires_grad_(True)
    F.cross_entropy(head(x, labels), labels).backward()
    for grad in (x.grad, head.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 1e-6
    assert (x.grad.abs().sum(1) > 0).all()  # every sample gets a gradient


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_bfloat16_autocast_leaves_the_margin_arithmetic_in_float32(name):
    x, labels = batch(16)
    reference = make_head(name).eval()(x, labels)
    head = make_head(name).eval()
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x, labels)
        loss = F.cross_entropy(logits, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    edges, edge_labels = edge_batch(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(head(edges, edge_labels)).all()


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_and_weights_give_finite_float32_logits(name, dtype):
    x, labels = batch(16)
    low = x.to(dtype)
    head = make_head(name).eval()
    # Half-precision embeddings are computed on exactly as their float32 values are.
    assert torch.equal(head(low, labels), head(low.float(), labels))
    # A half-precision head computes as a float32 one with the rounded weights.
    rounded = make_head(name).eval()
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.to(dtype).float())
    reference = rounded(low.float(), labels)
    half_head = make_head(name).to(dtype).eval()
    low.requires_grad_(True)
    logits = half_head(low, labels)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference)
    F.cross_entropy(logits, labels).backward()
    assert torch.isfinite(low.grad.float()).all()
    assert torch.isfinite(half_head.weight.grad.float()).all()
    edges, edge_labels = edge_batch(half_head)
    edges = edges.detach().to(dtype).requires_grad_(True)
    logits = half_head(edges, edge_labels)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, edge_labels).backward()
    # At cos θ = ±1 the gradient is finite in half precision too. A zero embedding (rows 2, 3)
    # has no direction: normalising it has gain 1/ε, finite in float32 (tested above) but past
    # the float16 range, so those rows are left out here.
    nonzero = torch.tensor([0, 1, 4, 5])
    assert torch.isfinite(edges.grad[nonzero].float()).all()


# -- λ annealing -------------------------------------------------------------------------------


def test_schedule_values():
    assert annealed_lambda(0) == 1000.0
    assert annealed_lambda(1) == pytest.approx(1000 / 1.12)
    assert annealed_lambda(10) == pytest.approx(1000 / 2.2)
    values = [annealed_lambda(t) for t in range(0, 3000, 7)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert annealed_lambda(1658) > 5.0 and annealed_lambda(1659) == 5.0  # 1000/(1+0.12t) = 5
    assert annealed_lambda(10**6) == 5.0
    assert annealed_lambda(3, base=100, gamma=1.0, power=2.0, minimum=0.0) == pytest.approx(6.25)


@pytest.mark.parametrize(("m", "floor"), [(1, 0.0), (2, 0.2), (3, 2.2), (4, 5.0)])
@pytest.mark.parametrize("name", ANNEALED)
def test_default_lambda_floor(name, m, floor):
    assert default_lambda_min(m) == pytest.approx(floor)
    head = make_head(name, m=m)
    assert head.lambda_min == pytest.approx(floor) and head.lambda_ == 1000.0
    assert head.schedule(10**9) == pytest.approx(floor, abs=1e-5)


@pytest.mark.parametrize("name", ANNEALED)
def test_lambda_advances_once_per_training_forward_and_never_in_eval(name):
    head = make_head(name)
    x, labels = batch()
    assert head.lambda_ == 1000.0 and int(head.iteration) == 0 and head.anneal
    head.train()
    first = head(x, labels)
    # The first training forward used λ = 1000, then the schedule moved on to iteration 1.
    expected = pin_lambda(copy_weights(head, make_head(name, seed=9)), 1000.0)(x, labels)
    torch.testing.assert_close(first, expected)
    assert int(head.iteration) == 1 and head.lambda_ == pytest.approx(1000 / 1.12)
    for _ in range(4):
        head(x, labels)
    assert int(head.iteration) == 5 and head.lambda_ == pytest.approx(annealed_lambda(5))
    head.eval()
    for _ in range(3):
        head(x, labels)
    assert int(head.iteration) == 5 and head.lambda_ == pytest.approx(annealed_lambda(5))


@pytest.mark.parametrize("name", ANNEALED)
def test_lambda_reaches_its_floor(name):
    head = make_head(name)
    head.load_state_dict(head.state_dict() | {"iteration": torch.tensor(1658)})
    head.anneal = True  # re-read the schedule at the loaded iteration
    assert head.lambda_ == pytest.approx(1000 / (1 + 0.12 * 1658))
    head.train()
    head(*batch())
    assert head.lambda_ == 5.0
    head(*batch())
    assert head.lambda_ == 5.0


@pytest.mark.parametrize("name", ANNEALED)
def test_state_dict_round_trip_resumes_exactly(name):
    x, labels = batch()
    head = make_head(name).train()
    for _ in range(7):
        head(x, labels)
    assert set(head.state_dict()) == {"weight", "iteration", "lambda_value", "annealing"}
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_head(name, seed=4).train()
    resumed.load_state_dict(torch.load(buffer))
    assert int(resumed.iteration) == 7 and resumed.lambda_ == head.lambda_ and resumed.anneal
    assert torch.equal(resumed(x, labels), head(x, labels))
    assert resumed.lambda_ == head.lambda_ and int(resumed.iteration) == 8

    head.lambda_ = 12.5  # a pinned λ round-trips too
    resumed = make_head(name, seed=4)
    resumed.load_state_dict(head.state_dict())
    assert resumed.lambda_ == 12.5 and not resumed.anneal


@pytest.mark.parametrize("name", ANNEALED)
def test_caller_set_lambda_pins_until_anneal_is_switched_back_on(name):
    x, labels = batch()
    head = make_head(name).train()
    head(x, labels)
    head.lambda_ = 2.5
    assert head.lambda_ == 2.5 and not head.anneal
    logits = head(x, labels)
    reference = pin_lambda(copy_weights(head, make_head(name, seed=9)), 2.5)(x, labels)
    torch.testing.assert_close(logits, reference)
    for _ in range(3):
        head(x, labels)
    assert head.lambda_ == 2.5 and int(head.iteration) == 5  # iterations are still counted
    head.anneal = True
    assert head.lambda_ == pytest.approx(annealed_lambda(5))
    head(x, labels)
    assert head.lambda_ == pytest.approx(annealed_lambda(6))
    with pytest.raises(ValueError, match="lambda_"):
        head.lambda_ = -1.0


@pytest.mark.parametrize("name", ANNEALED)
def test_anneal_false_holds_lambda_at_its_floor(name):
    head = make_head(name, m=4, anneal=False).train()
    assert head.lambda_ == 5.0 and not head.anneal
    for _ in range(3):
        head(*batch())
    assert head.lambda_ == 5.0 and int(head.iteration) == 3


# -- a toy optimisation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_a_few_sgd_steps_reduce_the_cross_entropy(name):
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * F.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat(16)
    inputs = centres[labels] + 0.3 * torch.randn(64, 16, generator=g)
    torch.manual_seed(0)
    backbone = nn.Linear(16, 16)
    head = build_head(name, 16, 4)
    optimiser = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)

    def loss() -> torch.Tensor:
        return F.cross_entropy(head(backbone(inputs), labels), labels)

    head.eval()
    with torch.no_grad():
        before = float(loss())
    head.train()
    for _ in range(40):
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()
    head.eval()
    with torch.no_grad():
        after = float(loss())
    assert math.isfinite(after) and after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", ["cosface", "arcface", "combined", "fnorm_sphereface"])
def test_a_sampled_classifier_reuses_the_margin_on_its_own_cosines(name):
    """Partial-FC style: cosines against the labels' classes plus a sample of the others,
    through the head's margin, equal the full head's logits on those columns."""
    torch.manual_seed(0)
    head = build_head(name, 16, 40)
    x = torch.randn(6, 16)
    labels = torch.tensor([3, 7, 7, 21, 0, 39])
    full = head(x, labels)
    sampled = torch.tensor([0, 3, 7, 12, 21, 30, 39])  # every label's class, and others
    local = torch.searchsorted(sampled, labels)
    cos = F.linear(F.normalize(x, dim=1), F.normalize(head.weight[sampled], dim=1))
    torch.testing.assert_close(head.margin_logits(cos, local), full[:, sampled])
