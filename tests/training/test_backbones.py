"""Backbones: shapes, gradient flow, published complexity figures, ONNX exportability.

Fresh backbones in eval mode use BatchNorm's default running statistics (mean 0, variance 1),
which for IResNet's arcface_torch initialisation lets activations grow until IResNet-100
overflows float32. Tests that run eval mode therefore first calibrate those statistics with
one training-mode pass, as any trained checkpoint would have them.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.backbones import (
    BACKBONE_NAMES,
    build_backbone,
    complexity_table,
    count_macs,
    count_parameters,
    format_complexity_table,
)

SMALL = ("iresnet18", "mobilefacenet", "sphereface20")
LARGE = ("iresnet34", "iresnet50", "iresnet100")


pytestmark = pytest.mark.usefixtures("one_thread")


def faces(batch: int, seed: int = 0) -> torch.Tensor:
    """Random stand-ins for normalised faces: uniform in [-1, 1], the backbones' input range."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1


def calibrated(model: nn.Module, batch: int = 2) -> nn.Module:
    """`model` in eval mode with BN running statistics taken from one batch of `batch` faces.

    Two faces give finite outputs; eight give embeddings of order 1, which an absolute
    tolerance needs (two leave the last BN's variance estimate tiny, the outputs in the
    hundreds).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, its statistics
    model.train()
    with torch.no_grad():
        model(faces(batch, seed=1))
    return model.eval()


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_names_are_the_documented_six():
    assert BACKBONE_NAMES == (
        "iresnet18",
        "iresnet34",
        "iresnet50",
        "iresnet100",
        "mobilefacenet",
        "sphereface20",
    )


def test_unknown_name_raises_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"iresnet50.*mobilefacenet.*sphereface20"):
        build_backbone("resnet9000")


FORWARD_CASES = [
    *((name, dim) for name in SMALL for dim in (512, 128)),
    *(pytest.param(name, 512, marks=pytest.mark.slow) for name in LARGE),
]


@pytest.mark.parametrize(("name", "dim"), FORWARD_CASES)
def test_training_forward_gives_one_embedding_per_face(name, dim):
    torch.manual_seed(0)
    model = build_backbone(name, dim).train()
    with torch.no_grad():
        out = model(faces(2))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_eval_mode_is_deterministic_and_keeps_the_norm(name):
    torch.manual_seed(0)
    model = calibrated(build_backbone(name))
    x = faces(2)
    with torch.no_grad():
        out = model(x)
        again = model(x)
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)
    # Raw embeddings: the norm is kept as a quality signal, so it must not be forced to 1.
    assert not torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-3)


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_the_first_convolution(name):
    torch.manual_seed(0)
    model = build_backbone(name, 128).train()
    model(faces(2)).pow(2).sum().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", SMALL)
def test_dropout_rate_reaches_the_embedding_layer(name):
    model = build_backbone(name, 64, dropout=0.5)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]


def test_iresnet_feature_scale_is_pinned_at_one():
    model = build_backbone("iresnet18", 128)
    assert torch.equal(model.features.weight, torch.ones(128))
    assert not model.features.weight.requires_grad
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(model) == trainable + 128


def test_macs_count_convolutions_and_linears_only():
    assert count_macs(nn.Sequential(nn.BatchNorm2d(3), nn.PReLU(3)), (1, 3, 10, 10)) == 0
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8))
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 3 * 9 * 10 * 10
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(depthwise, (2, 8, 10, 10)) == 2 * 8 * 9 * 10 * 10
    assert count_macs(nn.Linear(10, 4), (5, 10)) == 5 * 10 * 4


def test_counting_macs_leaves_the_model_alone():
    model = build_backbone("mobilefacenet", 128).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_macs(model) > 0
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def table():
    return complexity_table()


def row(table, name: str, dim: int = 512) -> dict:
    return next(r for r in table if r["name"] == name and r["embedding_dim"] == dim)


@pytest.mark.slow
def test_complexity_table_covers_every_backbone(table):
    assert [r["name"] for r in table] == [*BACKBONE_NAMES, "mobilefacenet"]
    assert [r["embedding_dim"] for r in table] == [512] * 6 + [128]
    text = format_complexity_table(table)
    lines = text.splitlines()
    # Header, rule, one line per row, all the same width so the columns line up.
    assert len({len(line) for line in lines[: len(table) + 2]}) == 1
    assert all(name in text for name in BACKBONE_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "dim", "params", "macs", "tolerance"),
    [
        # InsightFace arcface_torch model zoo figures.
        ("iresnet50", 512, 43.6e6, 6.3e9, 0.01),
        ("iresnet100", 512, 65.2e6, 12.1e9, 0.01),
        # MobileFaceNet paper (Chen et al. 2018): 0.99 M, 221 M MAdds at 128-d. It does not
        # say what it counts: conv and linear weights alone are 0.98 M, all parameters (ours)
        # 1.00 M; hence 2 %.
        ("mobilefacenet", 128, 0.99e6, 221e6, 0.02),
    ],
)
def test_matches_published_complexity(table, name, dim, params, macs, tolerance):
    r = row(table, name, dim)
    assert r["params"] == pytest.approx(params, rel=tolerance)
    assert r["macs"] == pytest.approx(macs, rel=tolerance)
    assert (r["published_params"], r["published_macs"]) == (params, macs)


@pytest.mark.slow
# torch's own exporter internals trip this deprecation; nothing in the backbones does.
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_exports_to_onnx_with_a_dynamic_batch(name, tmp_path):
    torch.manual_seed(0)
    model = calibrated(build_backbone(name, 128), batch=8)
    path = tmp_path / f"{name}.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model.eval(),
        (faces(2),),
        path,
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        verbose=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    assert isinstance(onnx_input.shape[0], str)  # symbolic, not the traced batch of 2
    for n in (1, 3):
        x = faces(n, seed=n + 10)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {onnx_input.name: x.numpy()})
        assert got.shape == (n, 128)
        assert np.abs(got - expected).max() < 1e-4
