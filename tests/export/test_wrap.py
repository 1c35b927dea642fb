"""`facemargin export wrap`: a foreign InsightFace-convention model served like our own."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_model import read_contract
from export.parity import aligned_faces
from service.cli import main
from service.vision.embedder import Embedder
from tests.conftest import MODELS
from training.embedder import load_backbone


@pytest.fixture(scope="module")
def foreign(checkpoint, tmp_path_factory) -> Path:
    """Our trained backbone written the way InsightFace's model zoo files are: legacy
    exporter, opset 11, float32 NCHW input 'input.1' already normalised, raw embedding out."""
    backbone, _ = load_backbone(checkpoint)
    path = tmp_path_factory.mktemp("foreign") / "w600k_like.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            backbone,
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            dynamo=False,
            opset_version=11,
            input_names=["input.1"],
            output_names=["fc1"],
            dynamic_axes={"input.1": {0: "None"}, "fc1": {0: "None"}},
        )
    return path


def test_wrapped_model_serves_like_our_own_export(
    foreign, exported, val_faces, val_pairs, tmp_path
):
    out = tmp_path / "wrapped.onnx"
    argv = ["export", "wrap", str(foreign), str(out), "--backbone", "mobilefacenet-foreign"]
    assert main([*argv, "--pairs", str(val_pairs), "--pairs-root", str(val_faces)]) == 0
    contract = read_contract(out)
    assert contract.backbone == "mobilefacenet-foreign" and contract.source == foreign.name
    assert contract.embedding_dim == 64
    assert contract.parity.min_cosine >= 0.99999
    assert contract.calibration.protocol == "pairs" and contract.calibration.operating_points
    faces = aligned_faces(val_faces, 16)
    ours, wrapped = Embedder(exported).embed(faces), Embedder(out).embed(faces)
    assert np.sum(ours.vectors * wrapped.vectors, axis=1).min() >= 0.99999
    np.testing.assert_allclose(wrapped.norms, ours.norms, rtol=1e-4)
    # Same weights, same graph semantics, so the same thresholds come out.
    ours_threshold = read_contract(exported).threshold_at(1e-2)
    assert contract.threshold_at(1e-2) == pytest.approx(ours_threshold, abs=1e-5)


def test_bgr_convention_swaps_channels_inside_the_graph(foreign, val_faces, tmp_path):
    rgb, bgr = tmp_path / "rgb.onnx", tmp_path / "bgr.onnx"
    common = ["--no-calibration", "--parity-faces", str(val_faces)]
    assert main(["export", "wrap", str(foreign), str(rgb), *common]) == 0
    assert main(["export", "wrap", str(foreign), str(bgr), "--bgr", *common]) == 0
    faces = aligned_faces(val_faces, 8)
    swapped = np.ascontiguousarray(faces[..., ::-1])
    np.testing.assert_allclose(
        Embedder(bgr).embed(faces).vectors, Embedder(rgb).embed(swapped).vectors, atol=1e-6
    )


def test_user_thresholds_are_kept_and_marked_as_not_measured(foreign, val_faces, tmp_path, capsys):
    out = tmp_path / "wrapped.onnx"
    argv = ["export", "wrap", str(foreign), str(out), "--no-calibration"]
    argv += [
        "--parity-faces",
        str(val_faces),
        "--threshold",
        "1e-3=0.31",
        "--threshold",
        "1e-4=0.4",
    ]
    assert main(argv) == 0
    contract = read_contract(out)
    assert contract.calibration.protocol == "user-supplied"
    assert contract.threshold_at(1e-3) == 0.31 and contract.threshold_at(1e-4) == 0.4
    assert contract.calibration.operating_points[0].tar is None
    assert "TAR not measured" in capsys.readouterr().out


def test_wrap_refuses_what_is_not_an_embedding_model(val_faces, tmp_path, capsys):
    out = tmp_path / "wrapped.onnx"
    argv = ["export", "wrap", str(MODELS / "mtcnn_onet.onnx"), str(out), "--no-calibration"]
    assert main([*argv, "--parity-faces", str(val_faces)]) == 1
    assert "expected one image input and one embedding output" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["0.5", "x=0.3", "2=0.3", "1e-3=7"])
def test_threshold_flag_is_validated(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "wrap", "a.onnx", "b.onnx", "--threshold", bad])
    assert "FAR" in capsys.readouterr().err
