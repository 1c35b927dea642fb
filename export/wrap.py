"""`facemargin export wrap`: give a foreign ONNX embedding model our input, outputs and
contract, so users can serve the models they already have.

A foreign model takes float32 NCHW (N, 3, S, S) faces aligned to some template, in its own
channel order and scaling (InsightFace's: 112, (x - 127.5) / 127.5, RGB; Open Model Zoo's:
128, BGR 0-255), and returns a raw embedding. The wrapped file takes the aligner's uint8 NHWC
RGB faces, does that preprocessing inside the graph, and adds the norm and the L2-normalised
embedding; its contract names the template, so the service aligns what the model expects.
The foreign graph itself is kept as it is, in its own opset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from export.calibration import ValidationData, measure
from export.onnx_model import weights_id, write_contract
from export.parity import FP32_MIN_COSINE, compare, parity_faces
from service.vision.alignment import ARCFACE_112, Template
from service.vision.contract import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    NORM_OUTPUT,
    AlignmentSpec,
    Calibration,
    InputSpec,
    ModelContract,
    Objective,
    OperatingPoint,
    TrainingSummary,
)

_PREFIX = "network/"


@dataclass(frozen=True)
class ForeignConvention:
    mean: float = 127.5
    std: float = 127.5
    bgr: bool = False  # True when the foreign model expects BGR channel order

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        """What a caller of the foreign model does by hand: the reference for parity."""
        x = faces[..., ::-1] if self.bgr else faces
        return ((x.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2).copy()

    def input_spec(self, size: int) -> InputSpec:
        order = "RGB to BGR, then " if self.bgr else ""
        return InputSpec(
            height=size,
            width=size,
            normalisation=f"{order}(x - {self.mean:g}) / {self.std:g}, inside the graph",
            network_color="BGR" if self.bgr else "RGB",
            network_mean=self.mean,
            network_std=self.std,
        )


class ForeignModelError(ValueError):
    pass


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _check_foreign(model: onnx.ModelProto, size: int) -> tuple[str, str, int]:
    """(input name, output name, embedding size) of a one-input, one-output embedding model
    taking (N, 3, size, size) faces."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ForeignModelError(
            f"expected one image input and one embedding output, found {len(inputs)} inputs "
            f"and {len(model.graph.output)} outputs"
        )
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1:] != [3, size, size]:
        raise ForeignModelError(
            f"input {inputs[0].name!r} is {dims}, not (N, 3, {size}, {size}) as the "
            "alignment template makes"
        )
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ForeignModelError(f"input {inputs[0].name!r} is not float32")
    out_dims = [
        d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    if len(out_dims) != 2 or not isinstance(out_dims[1], int) or out_dims[1] <= 0:
        raise ForeignModelError(f"output {model.graph.output[0].name!r} is {out_dims}, not (N, d)")
    return inputs[0].name, model.graph.output[0].name, out_dims[1]


def _reduce_l2(data: str, output: str, opset: int, nodes: list, inits: list) -> None:
    if opset >= 18:
        inits.append(helper.make_tensor("wrap_axes", TensorProto.INT64, [1], [1]))
        nodes.append(helper.make_node("ReduceL2", [data, "wrap_axes"], [output], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceL2", [data], [output], axes=[1], keepdims=1))


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return onnx.numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return onnx.numpy_helper.to_array(node.attribute[0].t)
    raise ForeignModelError(f"{name!r} is not a constant")


def unwrap(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ForeignConvention]:
    """The inverse of wrap_graph for any contract model (exported or wrapped): the network
    between the preprocessing (Transpose, [Gather], Cast, Sub, Div) and the normalisation
    (from ReduceL2's input), as a float32 NCHW -> raw embedding model, with its convention."""
    nodes = list(model.graph.node)
    ops = [n.op_type for n in nodes[:5]]
    prefix = (
        ["Transpose", "Gather", "Cast", "Sub", "Div"]
        if "Gather" in ops[:2]
        else ["Transpose", "Cast", "Sub", "Div"]
    )
    if ops[: len(prefix)] != prefix:
        raise ForeignModelError(f"unexpected preprocessing {ops}; not a facemargin model")
    sub, div = nodes[len(prefix) - 2], nodes[len(prefix) - 1]
    reduce = [n for n in nodes if n.op_type == "ReduceL2"]
    if len(reduce) != 1:
        raise ForeignModelError("expected exactly one ReduceL2 (the embedding norm)")
    convention = ForeignConvention(
        mean=float(_constant(model, sub.input[1])),
        std=float(_constant(model, div.input[1])),
        bgr=prefix[1] == "Gather",
    )
    inferred = onnx.shape_inference.infer_shapes(model)
    network = onnx.utils.Extractor(inferred).extract_model([div.output[0]], [reduce[0].input[0]])
    return network, convention


def wrap_graph(
    foreign: onnx.ModelProto, convention: ForeignConvention, size: int = ARCFACE_112.size
) -> tuple[onnx.ModelProto, int]:
    """The foreign graph between our preprocessing and our normalisation."""
    foreign_input, foreign_output, dim = _check_foreign(foreign, size)
    opset = _opset(foreign)
    foreign = onnx.compose.add_prefix(foreign, _PREFIX)
    foreign_input, foreign_output = _PREFIX + foreign_input, _PREFIX + foreign_output
    inits = [
        helper.make_tensor("wrap_mean", TensorProto.FLOAT, [], [convention.mean]),
        helper.make_tensor("wrap_std", TensorProto.FLOAT, [], [convention.std]),
        helper.make_tensor("wrap_eps", TensorProto.FLOAT, [], [1e-12]),
        helper.make_tensor("wrap_flat", TensorProto.INT64, [1], [-1]),
    ]
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["wrap_nchw"], perm=[0, 3, 1, 2])]
    pixels = "wrap_nchw"
    if convention.bgr:
        inits.append(helper.make_tensor("wrap_bgr", TensorProto.INT64, [3], [2, 1, 0]))
        nodes.append(helper.make_node("Gather", [pixels, "wrap_bgr"], ["wrap_swapped"], axis=1))
        pixels = "wrap_swapped"
    nodes += [
        helper.make_node("Cast", [pixels], ["wrap_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["wrap_float", "wrap_mean"], ["wrap_centred"]),
        helper.make_node("Div", ["wrap_centred", "wrap_std"], [foreign_input]),
        *foreign.graph.node,
    ]
    _reduce_l2(foreign_output, "wrap_norm", opset, nodes, inits)
    nodes += [
        helper.make_node("Max", ["wrap_norm", "wrap_eps"], ["wrap_safe_norm"]),
        helper.make_node("Div", [foreign_output, "wrap_safe_norm"], [EMBEDDING_OUTPUT]),
        helper.make_node("Reshape", ["wrap_norm", "wrap_flat"], [NORM_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "facemargin-wrapped",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info(NORM_OUTPUT, TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[*foreign.graph.initializer, *inits],
        value_info=list(foreign.graph.value_info),
    )
    model = helper.make_model(
        graph, opset_imports=list(foreign.opset_import), producer_name="facemargin wrap"
    )
    model.ir_version = foreign.ir_version
    model.functions.extend(foreign.functions)
    onnx.checker.check_model(model, full_check=True)
    return model, dim


def user_calibration(thresholds: dict[float, float]) -> Calibration:
    """Thresholds a user brings (e.g. from the model's publisher), marked as not measured."""
    return Calibration(
        protocol="user-supplied",
        description="given at wrap time; not measured by facemargin",
        n_images=0,
        n_images_without_face=0,
        n_genuine=0,
        n_impostor=0,
        operating_points=[
            OperatingPoint(far=far, threshold=value) for far, value in sorted(thresholds.items())
        ],
    )


Reference = Callable[[np.ndarray], np.ndarray]


def onnxruntime_reference(path: Path, convention: ForeignConvention) -> Reference:
    """The foreign file run directly in onnxruntime, preprocessed by hand, face by face."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(faces: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [session.run(None, {name: convention.preprocess(f[None])})[0] for f in faces]
        )

    return run


def contract_model(
    foreign: onnx.ModelProto,
    out: Path,
    *,
    template: Template,
    convention: ForeignConvention,
    reference: Reference,
    reference_name: str,
    validation: ValidationData | None,
    source: str,
    exporter: str,
    backbone: str = "foreign",
    thresholds: dict[float, float] | None = None,
    training: TrainingSummary | None = None,
    objective: Objective | None = None,
    parity_root: Path | None = None,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    """Wrap `foreign`, prove it computes what `reference` does on real aligned faces, measure
    its thresholds and write it with its contract; `out` appears only when all of it passed."""
    model, dim = wrap_graph(foreign, convention, template.size)
    partial = out.with_name(out.name + ".partial")
    try:
        onnx.save(model, str(partial))
        contract = ModelContract(
            model_id=weights_id(model),
            embedding_dim=dim,
            input=convention.input_spec(template.size),
            alignment_template=template.name,
            alignment=AlignmentSpec.of(template),
            backbone=backbone,
            objective=objective,
            training=training,
            source=source,
            exported_at=datetime.now(UTC),
            exporter=exporter,
        )
        write_contract(partial, contract)
        from service.vision.embedder import Embedder

        embedder = Embedder(partial)
        faces = parity_faces(validation, parity_root, template.size)
        raw = reference(faces).reshape(len(faces), -1).astype(np.float64)
        parity = compare(
            raw / np.linalg.norm(raw, axis=1, keepdims=True),
            embedder,
            faces,
            reference_name,
            FP32_MIN_COSINE,
            report=report,
        )
        contract = contract.model_copy(update={"parity": parity})
        if thresholds:
            contract = contract.model_copy(update={"calibration": user_calibration(thresholds)})
        if validation is not None:
            measured = measure(embedder, validation, progress)
            update = {"validation": measured.validations}
            if not thresholds:
                update["calibration"] = measured.calibration
            contract = contract.model_copy(update=update)
        write_contract(partial, contract)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return contract


def wrap_model(
    foreign_path: Path,
    out: Path,
    validation: ValidationData | None,
    thresholds: dict[float, float] | None = None,
    convention: ForeignConvention = ForeignConvention(),
    parity_root: Path | None = None,
    backbone: str = "foreign",
    template: Template = ARCFACE_112,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    return contract_model(
        onnx.load(str(foreign_path)),
        out,
        template=template,
        convention=convention,
        reference=onnxruntime_reference(foreign_path, convention),
        reference_name=f"{foreign_path.name} run directly",
        validation=validation,
        source=foreign_path.name,
        exporter="facemargin export wrap",
        backbone=backbone,
        thresholds=thresholds,
        parity_root=parity_root,
        progress=progress,
        report=report,
    )
