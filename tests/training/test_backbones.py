"""Backbones: shapes, published complexity figures, gradient flow, ONNX exportability."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.backbones import (
    BACKBONE_NAMES,
    build_backbone,
    complexity_table,
    count_macs,
    count_parameters,
)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "sphereface20"])
@pytest.mark.parametrize("dim", [512, 128])
def test_forward_shape_and_determinism(name, dim):
    torch.manual_seed(0)
    model = build_backbone(name, dim).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, dim) and torch.isfinite(out).all()
        assert torch.equal(out, model(x))


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "sphereface20"])
def test_gradient_reaches_the_first_convolution(name):
    model = build_backbone(name, 64).train()
    model(torch.randn(2, 3, 112, 112)).pow(2).sum().backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params_m", "gmacs"), [("iresnet50", 43.6, 6.3), ("iresnet100", 65.2, 12.1)]
)
def test_published_complexity(name, params_m, gmacs):
    model = build_backbone(name)
    assert count_parameters(model) / 1e6 == pytest.approx(params_m, rel=0.01)
    assert count_macs(model) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_mobilefacenet_matches_its_paper_at_128d():
    model = build_backbone("mobilefacenet", 128)
    assert count_parameters(model) / 1e6 == pytest.approx(0.99, rel=0.03)
    assert count_macs(model) / 1e6 == pytest.approx(221, rel=0.05)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="iresnet50"):
        build_backbone("resnet9000")


@pytest.mark.slow
def test_complexity_table_covers_every_backbone():
    rows = complexity_table()
    assert [r["backbone"] for r in rows][: len(BACKBONE_NAMES)] == list(BACKBONE_NAMES)
    assert all(r["params_m"] > 0.5 and r["gmacs"] > 0.1 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_exports_to_onnx_with_a_dynamic_batch(name, tmp_path):
    torch.manual_seed(0)
    model = build_backbone(name, 128).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model,
        (torch.randn(2, 3, 112, 112),),
        dynamo=True,
        dynamic_shapes={"x": {0: batch}},
        verbose=False,
    )
    path = tmp_path / f"{name}.onnx"
    program.save(str(path), external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 112, 112)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        # Untrained networks in eval mode reach large magnitudes; compare relative to them.
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
