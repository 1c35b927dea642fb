"""`facemargin export yunet`: the committed models/yunet.onnx is exactly the conversion of the
OpenCV Zoo file, with its weights and nodes unchanged and only the declared shapes dynamic."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from export.yunet import LICENCE, convert_yunet
from service.cli import main
from tests.conftest import MODELS, SHARED

SOURCE = SHARED / "models" / "third-party" / "yunet" / "face_detection_yunet_2023mar.onnx"
pytestmark = pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} absent")


def test_committed_file_is_the_conversion(tmp_path):
    out = tmp_path / "yunet.onnx"
    convert_yunet(SOURCE, out)
    assert out.read_bytes() == (MODELS / "yunet.onnx").read_bytes()


def test_cli_writes_the_same_bytes(tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", "yunet", str(SOURCE), str(out)]) == 0
    assert out.read_bytes() == (MODELS / "yunet.onnx").read_bytes()
    assert main(["export", "yunet", str(tmp_path / "missing.onnx"), str(out)]) == 1
    assert "not found" in capsys.readouterr().err


def test_weights_nodes_and_metadata():
    source, converted = onnx.load(str(SOURCE)), onnx.load(str(MODELS / "yunet.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in converted.graph.initializer}
    assert len(weights) == len(source.graph.initializer)
    for init in source.graph.initializer:
        np.testing.assert_array_equal(weights[init.name], numpy_helper.to_array(init))
    assert list(converted.graph.node) == list(source.graph.node)
    dims = converted.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == [1, 3, "height", "width"]
    for output in converted.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        assert out_dims[0].dim_value == 1 and out_dims[1].dim_param and out_dims[2].dim_value
    meta = {p.key: p.value for p in converted.metadata_props}
    assert meta["source"] == SOURCE.name
    assert meta["source_sha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert meta["licence"] == LICENCE


def test_runs_at_other_sizes_and_matches_the_source_at_640():
    converted = ort.InferenceSession(str(MODELS / "yunet.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(SOURCE), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)
    for a, b in zip(
        converted.run(None, {"input": x}), original.run(None, {"input": x}), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    outputs = converted.run(["cls_8", "bbox_32"], {"input": x[:, :, :96, :160]})
    assert outputs[0].shape == (1, 12 * 20, 1) and outputs[1].shape == (1, 3 * 5, 4)
