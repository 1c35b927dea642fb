"""A contract model's network run by torch for fine-tuning: the same embeddings as the
service's onnxruntime path, every weight trainable, anything unknown refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.wrap import unwrap
from service.vision.alignment import OMZ_128
from service.vision.embedder import Embedder
from service.vision.preprocess import DetectorConfig, build_detector, detect_and_align
from tests.conftest import MODELS, load_rgb, sample_photos
from training.data import to_tensor
from training.onnx_network import ForeignBackbone, OnnxNetwork

OMZ = MODELS / "face-reidentification-retail-0095.onnx"


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Real photos aligned onto the OMZ template by the service's own path."""
    detector = build_detector(DetectorConfig())
    aligned = []
    for path in sample_photos(4):
        found, _ = detect_and_align(load_rgb(path), detector, template=OMZ_128)
        aligned += [f.pixels for f in found[:1]]
    return np.stack(aligned)


def test_the_torch_network_embeds_as_the_served_file_does(faces):
    backbone = ForeignBackbone.from_file(OMZ).eval()
    with torch.no_grad():
        ours = backbone(torch.stack([to_tensor(f) for f in faces]))
    ours = torch.nn.functional.normalize(ours, dim=1).numpy()
    served = Embedder(OMZ).embed(faces).vectors
    assert np.sum(ours * served, axis=1).min() >= 0.99999


def test_every_weight_of_the_file_trains(faces):
    backbone = ForeignBackbone.from_file(OMZ).train()
    network, _ = unwrap(onnx.load(str(OMZ)))
    weights = [numpy_helper.to_array(t) for t in network.graph.initializer]
    assert sum(p.numel() for p in backbone.parameters()) == sum(
        w.size for w in weights if w.ndim > 0
    )
    batch = torch.stack([to_tensor(f) for f in faces])
    embeddings = torch.nn.functional.normalize(backbone(batch), dim=1)
    # Pull every face towards the first one: a loss that needs every layer.
    (1 - embeddings[1:] @ embeddings[0]).sum().backward()
    silent = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent


def _tiny(op: str = "Conv", pads: tuple[int, ...] = (0, 0, 1, 1)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "b")
    nodes = [
        helper.make_node(op, ["x", "w"], ["c"], pads=list(pads), strides=[2, 2])
        if op == "Conv"
        else helper.make_node(op, ["x"], ["c"]),
        helper.make_node("Add", ["c", "b"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["y"], alpha=0.2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_asymmetric_padding_matches_onnxruntime():
    model = _tiny()
    x = np.random.default_rng(1).normal(size=(1, 3, 9, 9)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    with torch.no_grad():
        got = OnnxNetwork(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_operator_it_cannot_train_is_named():
    with pytest.raises(ValueError, match="operators Softmax are not supported"):
        OnnxNetwork(_tiny("Softmax"))
