"""Embedding losses against hand-computed values and brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.losses import LOSS_NAMES, build_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def on_circle(angles: list[float]) -> torch.Tensor:
    """Unit vectors at the given angles in the plane (squared distance 2 − 2 cos Δ)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def sq(a: float, b: float) -> float:
    """Squared Euclidean distance between the unit vectors at angles a and b."""
    return 2.0 - 2.0 * math.cos(a - b)


def hinge(value: float) -> float:
    return max(0.0, value)


def reference_triplet(x: torch.Tensor, labels: list[int], margin: float, mining: str) -> float:
    """The definitions in training/losses.py, one triplet at a time."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    n = len(labels)

    def d(i: int, j: int) -> float:
        return float(((x[i] - x[j]) ** 2).sum())

    def positives(a: int) -> list[int]:
        return [p for p in range(n) if p != a and labels[p] == labels[a]]

    def negatives(a: int) -> list[int]:
        return [k for k in range(n) if labels[k] != labels[a]]

    losses = []
    if mining == "all":
        for a in range(n):
            for p, k in itertools.product(positives(a), negatives(a)):
                losses.append(hinge(d(a, p) - d(a, k) + margin))
        losses = [v for v in losses if v > 0]
    elif mining == "hard":
        for a in range(n):
            if positives(a) and negatives(a):
                far = max(d(a, p) for p in positives(a))
                near = min(d(a, k) for k in negatives(a))
                losses.append(hinge(far - near + margin))
    else:
        for a in range(n):
            if not negatives(a):
                continue
            for p in positives(a):
                band = [d(a, k) for k in negatives(a) if d(a, p) < d(a, k) < d(a, p) + margin]
                chosen = min(band) if band else min(d(a, k) for k in negatives(a))
                losses.append(hinge(d(a, p) - chosen + margin))
    return sum(losses) / len(losses) if losses else 0.0


def reference_contrastive(x: torch.Tensor, labels: list[int], margin: float) -> float:
    x = torch.nn.functional.normalize(x.double(), dim=1)
    total, pairs = 0.0, 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        distance = float((x[i] - x[j]).norm())
        same = labels[i] == labels[j]
        total += distance**2 if same else hinge(margin - distance) ** 2
        pairs += 1
    return total / (2 * pairs) if pairs else 0.0


# -- construction ------------------------------------------------------------------------------


def test_loss_names_and_unknown_names():
    assert LOSS_NAMES == ("triplet", "center", "contrastive")
    with pytest.raises(ValueError, match="unknown loss 'arcface'") as error:
        build_loss("arcface")
    for name in LOSS_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("triplet", {"mining": "easy"}, "all, hard, semihard"),
        ("triplet", {"alpha": 0.2}, "does not take alpha"),
        ("triplet", {"margin": 0.0}, "margin"),
        ("contrastive", {"margin": -1.0}, "margin"),
        ("center", {"num_classes": 3}, "feat_dim"),
        ("center", {"num_classes": 3, "feat_dim": 2, "alpha": 1.5}, "alpha"),
        ("center", {"num_classes": 2.5, "feat_dim": 2}, "num_classes"),
    ],
)
def test_bad_hyper_parameters_are_refused(name, hparams, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build_loss(name, **hparams)


def test_defaults_and_config_style_values():
    triplet = build_loss("triplet")
    assert (triplet.margin, triplet.mining) == (0.2, "hard")
    assert build_loss("triplet", mining="Batch-All").mining == "all"
    assert build_loss("triplet", mining="semi_hard").mining == "semihard"
    assert build_loss("contrastive").margin == 1.0
    center = build_loss("center", num_classes=7.0, feat_dim=3.0)  # TOML floats
    assert center.centers.shape == (7, 3) and (center.alpha, center.weight) == (0.5, 0.003)


# -- triplet -----------------------------------------------------------------------------------


def test_batch_hard_picks_the_farthest_positive_and_nearest_negative():
    angles = [0.0, 0.1, 0.4, 0.6, 2.0]
    labels = [0, 0, 0, 1, 1]
    # By hand: anchor → (farthest positive, nearest negative).
    chosen = {0: (2, 3), 1: (2, 3), 2: (0, 3), 3: (4, 2), 4: (3, 2)}
    expected = sum(
        hinge(sq(angles[a], angles[p]) - sq(angles[a], angles[n]) + 0.2)
        for a, (p, n) in chosen.items()
    ) / len(chosen)
    loss = build_loss("triplet", margin=0.2, mining="hard")(on_circle(angles), torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Not the batch-all value: the choice matters here.
    assert loss.item() != pytest.approx(reference_triplet(on_circle(angles), labels, 0.2, "all"))


def test_batch_all_averages_over_the_triplets_with_positive_loss():
    angles, labels = [0.0, 0.5, 1.5], torch.tensor([0, 0, 1])
    # Two valid triplets: (0, 1, 2) is easy (loss 0), (1, 0, 2) is not.
    assert hinge(sq(0.0, 0.5) - sq(0.0, 1.5) + 1.0) == 0.0
    active = sq(0.5, 0.0) - sq(0.5, 1.5) + 1.0
    loss = build_loss("triplet", margin=1.0, mining="all")(on_circle(angles), labels)
    assert loss.item() == pytest.approx(active, abs=1e-6)  # not active / 2


def test_semi_hard_takes_the_nearest_negative_in_the_band_else_the_hardest():
    angles = [0.0, 0.5, 0.3, 0.6, 0.65]
    labels = torch.tensor([0, 0, 1, 2, 3])  # the only positive pairs: (0, 1) and (1, 0)
    d_ap = sq(0.0, 0.5)
    # Anchor 0: negatives at 0.6 and 0.65 lie in (d_ap, d_ap + α); the nearer is 0.6.
    assert d_ap < sq(0.0, 0.6) < sq(0.0, 0.65) < d_ap + 0.2 and sq(0.0, 0.3) < d_ap
    from_anchor_0 = d_ap - sq(0.0, 0.6) + 0.2
    # Anchor 1: every negative is nearer than the positive; fall back to the nearest, 0.6.
    assert max(sq(0.5, 0.3), sq(0.5, 0.6), sq(0.5, 0.65)) < d_ap
    from_anchor_1 = d_ap - sq(0.5, 0.6) + 0.2
    loss = build_loss("triplet", margin=0.2, mining="semihard")(on_circle(angles), labels)
    assert loss.item() == pytest.approx((from_anchor_0 + from_anchor_1) / 2, abs=1e-6)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("seed", range(4))
def test_triplet_matches_the_brute_force_definition(mining, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (9,), generator=g) if seed % 2 else torch.arange(4).repeat(3)
    x = torch.randn(len(labels), 5, generator=g)
    margin = 0.3 + 0.2 * seed
    loss = build_loss("triplet", margin=margin, mining=mining)(x, labels)
    expected = reference_triplet(x, labels.tolist(), margin, mining)
    assert expected > 0 and loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.dtype == torch.float32 and loss.ndim == 0


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
def test_triplet_is_scale_invariant_and_has_a_gradient(mining):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(4)
    x = torch.randn(16, 8, generator=g).requires_grad_(True)
    loss = build_loss("triplet", mining=mining)(x, labels)
    scaled = build_loss("triplet", mining=mining)(10 * x.detach(), labels)
    assert loss.item() == pytest.approx(float(scaled), rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3], [5, 5, 5, 5], [0], []],
    ids=["no positives", "no negatives", "one sample", "empty"],
)
def test_triplet_without_triplets_is_a_zero_that_backpropagates(mining, labels):
    x = torch.randn(len(labels), 4).requires_grad_(True)
    loss = build_loss("triplet", mining=mining)(x, torch.tensor(labels, dtype=torch.long))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert x.grad is not None and (x.grad == 0).all()


def test_batch_all_with_only_easy_triplets_is_a_zero_that_backpropagates():
    x = on_circle([0.0, 0.01, math.pi, math.pi + 0.01]).requires_grad_(True)
    loss = build_loss("triplet", mining="all")(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert (x.grad == 0).all()


def test_triplet_under_bfloat16_autocast_is_float32():
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(12, 8, generator=g), torch.arange(3).repeat(4)
    reference = build_loss("triplet")(x, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build_loss("triplet")(x.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(float(reference), abs=0.02)


# -- center ------------------------------------------------------------------------------------


def center_loss(alpha: float = 0.5, weight: float = 0.1, centers=None):
    loss = build_loss("center", num_classes=3, feat_dim=2, alpha=alpha, weight=weight)
    if centers is not None:
        loss.centers.copy_(torch.tensor(centers))
    return loss


def test_center_loss_value_and_gradient():
    loss = center_loss(weight=0.1, centers=[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    value = loss.eval()(x, labels)
    # ½·mean‖x − c_y‖² = ½·(1 + 4 + 1)/3 = 1, times the weight.
    assert value.item() == pytest.approx(0.1)
    value.backward()
    expected = 0.1 * torch.tensor([[1.0, 0.0], [0.0, -2.0], [0.0, 1.0]]) / 3
    torch.testing.assert_close(x.grad, expected)


def test_centers_are_a_buffer_in_the_state_dict_not_parameters():
    loss = center_loss()
    assert list(loss.parameters()) == [] and set(loss.state_dict()) == {"centers"}
    assert not loss.centers.requires_grad


def test_centers_move_by_the_papers_rule_after_the_loss():
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    loss = center_loss(alpha=0.5, weight=1.0, centers=old.tolist())
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0], [3.0, 2.0]])
    labels = torch.tensor([0, 1, 0])
    value = loss.train()(x, labels)
    # The returned loss used the old centres: ½·(1 + 4 + 8)/3.
    assert value.item() == pytest.approx(13 / 6)
    # Δc_0 = ((c_0 − x_0) + (c_0 − x_2)) / (1 + 2), Δc_1 = (c_1 − x_1) / (1 + 1); c_2 unused.
    delta_0 = ((old[0] - x[0]) + (old[0] - x[2])) / 3
    delta_1 = (old[1] - x[1]) / 2
    expected = torch.stack([old[0] - 0.5 * delta_0, old[1] - 0.5 * delta_1, old[2]])
    torch.testing.assert_close(loss.centers, expected)
    # That is: toward the class mean by the fraction α·n/(1+n).
    mean_0 = x[[0, 2]].mean(0)
    torch.testing.assert_close(loss.centers[0] - mean_0, (1 - 0.5 * 2 / 3) * (old[0] - mean_0))


def test_centers_stay_put_in_eval_mode_and_converge_to_class_means_in_training():
    loss = center_loss(alpha=0.5)
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(12, 2, generator=g), torch.arange(3).repeat(4)
    loss.eval()(x, labels)
    assert (loss.centers == 0).all()
    loss.train()
    for _ in range(40):
        loss(x, labels)
    means = torch.stack([x[labels == j].mean(0) for j in range(3)])
    torch.testing.assert_close(loss.centers, means)  # shrinks by (1 − 0.5·4/5) per step


# -- contrastive -------------------------------------------------------------------------------


def test_contrastive_by_hand():
    angles, labels = [0.0, 0.3, 1.0], torch.tensor([0, 0, 1])
    positive = sq(0.0, 0.3)  # y·D²
    negatives = [hinge(1.0 - math.sqrt(sq(a, 1.0))) ** 2 for a in (0.0, 0.3)]
    expected = (positive + sum(negatives)) / (2 * 3)  # 1/(2P) over P = 3 pairs
    loss = build_loss("contrastive", margin=1.0)(3.0 * on_circle(angles), labels)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_contrastive_matches_the_brute_force_definition(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (8,), generator=g)
    x = torch.randn(8, 4, generator=g)
    margin = 0.8 + 0.4 * seed
    loss = build_loss("contrastive", margin=margin)(x, labels)
    expected = reference_contrastive(x, labels.tolist(), margin)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_contrastive_gradient_is_finite_for_identical_embeddings():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = build_loss("contrastive", margin=1.0)(x, torch.tensor([0, 0, 1]))
    # The pairs (0, 2) and (1, 2) are different people at distance 0: (m − 0)² each.
    assert loss.item() == pytest.approx(2.0 / 6, abs=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("labels", [[3], []], ids=["one sample", "empty"])
def test_contrastive_without_pairs_is_a_zero_that_backpropagates(labels):
    x = torch.randn(len(labels), 4).requires_grad_(True)
    loss = build_loss("contrastive")(x, torch.tensor(labels, dtype=torch.long))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert x.grad is not None and (x.grad == 0).all()
