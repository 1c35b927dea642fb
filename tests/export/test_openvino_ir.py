"""OpenVINO IR -> ONNX conversion: the converted graph must compute what OpenVINO computes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from export.openvino_ir import OUTPUT_NAME, convert_ir
from tests.conftest import DATA, SHARED, spread

OMZ = SHARED / "models" / "third-party" / "omz-face-reidentification-retail-0095"
FP16_IR = OMZ / "FP16" / "face-reidentification-retail-0095.xml"
INT8_IR = OMZ / "FP16-INT8" / "face-reidentification-retail-0095.xml"
CFP = DATA / "val" / "cfp" / "Data" / "Images"
MIN_COSINE = 0.99999


def _openvino(xml: Path):
    """The IR compiled by OpenVINO on CPU in f32, so it is a full-precision reference."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    return core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def _onnxruntime(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _faces(count: int) -> np.ndarray:
    """Real CFP frontal photos, centre-cropped to 128x128, BGR float 0-255 NCHW (the IR's
    input; alignment does not matter for parity)."""
    photos = spread(list(CFP.glob("*/frontal/*.jpg")), count)
    if len(photos) < count:
        pytest.skip(f"CFP photos not found under {CFP}")
    crops = []
    for photo in photos:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = cv2.resize(image[top : top + side, left : left + side], (128, 128))
        crops.append(crop.transpose(2, 0, 1))
    return np.stack(crops).astype(np.float32)


# --- the Open Model Zoo face re-identification net -------------------------------------------


@pytest.fixture(scope="module")
def omz_model() -> onnx.ModelProto:
    if not FP16_IR.is_file():
        pytest.skip(f"OMZ IR not found at {FP16_IR}")
    return convert_ir(FP16_IR)


def test_omz_graph_shape(omz_model):
    (inp,), (out,) = omz_model.graph.input, omz_model.graph.output
    assert inp.name == "0" and out.name == OUTPUT_NAME
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 128]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 256]
    ops = {node.op_type for node in omz_model.graph.node}
    assert "LeakyRelu" in ops and "PRelu" not in ops  # every slope in this net is a scalar
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in omz_model.graph.initializer)
    assert (omz_model.opset_import[0].version, omz_model.ir_version) == (17, 8)


def test_omz_conversion_is_deterministic(omz_model):
    assert convert_ir(FP16_IR).SerializeToString() == omz_model.SerializeToString()


def test_omz_parity_with_openvino(omz_model):
    reference = _openvino(FP16_IR)
    faces = _faces(24)
    expected = np.concatenate(
        [reference(faces[i : i + 1])[0].reshape(1, -1) for i in range(len(faces))]
    )
    session = _onnxruntime(omz_model)
    single = np.concatenate(
        [session.run(None, {"0": faces[i : i + 1]})[0] for i in range(len(faces))]
    )
    batched = np.concatenate(
        [session.run(None, {"0": faces[i : i + 8]})[0] for i in range(0, len(faces), 8)]
    )
    for got in (single, batched):
        cosines = _cosines(expected, got)
        print(f"min cosine {cosines.min():.8f}, max abs diff {np.abs(expected - got).max():.3e}")
        assert cosines.min() >= MIN_COSINE
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_int8_ir_is_refused():
    if not INT8_IR.is_file():
        pytest.skip(f"OMZ INT8 IR not found at {INT8_IR}")
    with pytest.raises(ValueError, match="INT8"):
        convert_ir(INT8_IR)


# --- synthetic tiny IRs ------------------------------------------------------------------------


class TinyIr:
    """Writes a small IR v11 (XML + .bin): each layer has one output port, numbered after its
    inputs, and constants are stored as fp16 + Convert like OMZ's compressed weights."""

    def __init__(self) -> None:
        self.net = ET.Element("net", name="tiny", version="11")
        self.layers = ET.SubElement(self.net, "layers")
        self.edges = ET.SubElement(self.net, "edges")
        self.blob = bytearray()
        self.shapes: list[tuple[int, ...]] = []
        self.arity: list[int] = []

    def layer(self, kind: str, data: dict[str, str], inputs: list[int], shape) -> int:
        index = len(self.shapes)
        element = ET.SubElement(
            self.layers, "layer", id=str(index), name=f"{kind}_{index}", type=kind, version="opset1"
        )
        if data:
            ET.SubElement(element, "data", {k: str(v) for k, v in data.items()})
        ports = ET.SubElement(element, "input") if inputs else None
        for port, source in enumerate(inputs):
            ports_el = ET.SubElement(ports, "port", id=str(port), precision="FP32")
            for dim in self.shapes[source]:
                ET.SubElement(ports_el, "dim").text = str(dim)
            out_port = self.arity[source]  # a layer's output port follows its inputs
            ET.SubElement(
                self.edges,
                "edge",
                {
                    "from-layer": str(source),
                    "from-port": str(out_port),
                    "to-layer": str(index),
                    "to-port": str(port),
                },
            )
        if shape is not None:
            out = ET.SubElement(ET.SubElement(element, "output"), "port", id=str(len(inputs)))
            out.set("precision", "FP16" if kind == "Const" else "FP32")
            if kind == "Parameter":
                out.set("names", "0")
            for dim in shape:
                ET.SubElement(out, "dim").text = str(dim)
        self.shapes.append(tuple(shape or ()))
        self.arity.append(len(inputs))
        return index

    def const(self, value: np.ndarray) -> int:
        raw = np.asarray(value, np.float16).tobytes()
        data = {
            "element_type": "f16",
            "shape": ", ".join(map(str, value.shape)),
            "offset": len(self.blob),
            "size": len(raw),
        }
        self.blob += raw
        const = self.layer("Const", data, [], value.shape)
        return self.layer("Convert", {"destination_type": "f32"}, [const], value.shape)

    def write(self, path: Path) -> Path:
        ET.ElementTree(self.net).write(path)
        path.with_suffix(".bin").write_bytes(bytes(self.blob))
        return path


def _tiny_ir(path: Path, extra: str | None = None) -> Path:
    """Conv + broadcast bias Add, scalar PReLU, grouped conv, per-channel PReLU, Multiply, AvgPool."""
    rng = np.random.default_rng(0)
    ir = TinyIr()
    x = ir.layer("Parameter", {"shape": "1,3,8,8", "element_type": "f32"}, [], (1, 3, 8, 8))
    conv = {"strides": "1, 1", "dilations": "1, 1", "pads_begin": "1, 1", "pads_end": "1, 1"}
    conv |= {"auto_pad": "explicit"}
    y = ir.layer("Convolution", conv, [x, ir.const(rng.normal(size=(4, 3, 3, 3)))], (1, 4, 8, 8))
    y = ir.layer(
        "Add",
        {"auto_broadcast": "numpy"},
        [y, ir.const(rng.normal(size=(1, 4, 1, 1)))],
        (1, 4, 8, 8),
    )
    y = ir.layer("PReLU", {}, [y, ir.const(np.array([0.25]))], (1, 4, 8, 8))
    grouped = ir.const(rng.normal(size=(4, 1, 1, 3, 3)))
    y = ir.layer("GroupConvolution", conv, [y, grouped], (1, 4, 8, 8))
    y = ir.layer("PReLU", {}, [y, ir.const(np.array([0.1, -0.2, 0.3, 0.5]))], (1, 4, 8, 8))
    if extra is not None:
        y = ir.layer(extra, {"axis": "1"}, [y], (1, 4, 8, 8))
    y = ir.layer(
        "Multiply", {"auto_broadcast": "numpy"}, [y, ir.const(np.array([2.0]))], (1, 4, 8, 8)
    )
    pool = {"kernel": "2, 2", "strides": "2, 2", "pads_begin": "0, 0", "pads_end": "0, 0"}
    pool |= {"exclude-pad": "true", "rounding_type": "floor", "auto_pad": "explicit"}
    y = ir.layer("AvgPool", pool, [y], (1, 4, 4, 4))
    ir.layer("Result", {}, [y], None)
    return ir.write(path)


def test_tiny_ir_matches_openvino(tmp_path):
    xml = _tiny_ir(tmp_path / "tiny.xml")
    model = convert_ir(xml)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("LeakyRelu") == 1 and ops.count("PRelu") == 1
    reference = _openvino(xml)
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    expected = np.concatenate([reference(x[i : i + 1])[0].reshape(1, -1) for i in range(3)])
    got = _onnxruntime(model).run(None, {"0": x})[0]
    assert got.shape == (3, 64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_layer_is_named(tmp_path):
    xml = _tiny_ir(tmp_path / "tiny.xml", extra="SoftMax")
    with pytest.raises(ValueError, match="SoftMax"):
        convert_ir(xml)
