"""Smaller and faster copies of an exported fp32 model: fp16 for GPUs, int8 (static, QDQ,
per-channel) for CPUs, bf16 (the same weights run by OpenVINO at bfloat16) for CPUs that have
it. Each variant is a model of its own: new weights id, the fp32 model as
its parent, thresholds re-measured on the variant itself, and proof of how far it moved."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

from export.calibration import ValidationData, measure
from export.onnx_model import read_contract, weights_id, write_contract
from export.parity import aligned_faces, compare, parity_faces, run_in_batches
from export.wrap import unwrap, wrap_graph
from service.vision.contract import INPUT_NAME, AccuracyChange, ModelContract, Quantization
from service.vision.embedder import Embedder, ModelContractError
from service.vision.openvino_runner import require_bf16

FP16_MIN_COSINE = 0.9995
INT8_OPS = ["Conv", "Gemm", "MatMul"]
DEFAULT_TOLERANCE_PP = 0.5
BF16_MEASURED_HERE = "a bf16 variant is measured on the path that will serve it, so making one"


def topologically_sorted(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (the fp16 converter appends
    the casts it inserts at the end, which onnx.checker rightly rejects)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


class VariantRejected(RuntimeError):
    """The variant moved too far from fp32 to be trusted; nothing was written."""


def _fp32_source(source: Path) -> ModelContract:
    contract = read_contract(source)
    if contract is None:
        raise ModelContractError(f"{source} has no facemargin contract; export or wrap it first")
    if contract.variant != "fp32":
        raise ModelContractError(
            f"{source} is already a {contract.variant} variant; start from the fp32 model"
        )
    return contract


def _finish(
    partial: Path,
    out: Path,
    parent: ModelContract,
    variant: str,
    validation: ValidationData | None,
    progress: bool,
    **fields,
) -> ModelContract:
    contract = parent.model_copy(
        update={
            "model_id": weights_id(onnx.load(str(partial))),
            "parent_model_id": parent.model_id,
            "variant": variant,
            "exported_at": datetime.now(UTC),
            "calibration": None,
            "validation": [],
            "parity": None,
            "quantization": None,
            **fields,
        }
    )
    write_contract(partial, contract)
    if validation is not None:
        measured = measure(Embedder(partial), validation, progress)
        contract = contract.model_copy(
            update={"calibration": measured.calibration, "validation": measured.validations}
        )
        write_contract(partial, contract)
    partial.replace(out)
    return contract


def make_fp16(
    source: Path,
    out: Path,
    validation: ValidationData | None,
    parity_root: Path | None = None,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    parent = _fp32_source(source)
    partial = out.with_name(out.name + ".partial")
    try:
        # Only the network goes to fp16; the uint8 -> float preprocessing and the final L2
        # normalisation are rebuilt around it in float32 (cheap, and in fp16 the "unit"
        # embedding would drift 1e-3 from length 1).
        network, convention = unwrap(onnx.load(str(source)))
        network = convert_float_to_float16(network, keep_io_types=True)
        topologically_sorted(network.graph)
        size = parent.template().size
        model, _ = wrap_graph(network, convention, size)
        onnx.save(model, str(partial))
        write_contract(partial, parent.model_copy(update={"variant": "fp16"}))
        faces = parity_faces(validation, parity_root, size)
        reference = run_in_batches(Embedder(source), faces, 8)
        parity = compare(
            reference,
            Embedder(partial),
            faces,
            f"fp32 model {parent.model_id}",
            FP16_MIN_COSINE,
            report=report,
        )
        return _finish(partial, out, parent, "fp16", validation, progress, parity=parity)
    finally:
        partial.unlink(missing_ok=True)


class _FaceReader:
    """onnxruntime's calibration reader over aligned face files, a batch at a time."""

    def __init__(self, faces: np.ndarray, batch_size: int = 16) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [faces[i : i + batch_size] for i in range(0, len(faces), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    present = ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
    a, b = a[present].astype(np.float64), b[present].astype(np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def make_int8(
    source: Path,
    out: Path,
    validation: ValidationData,
    calibration_root: Path,
    calibration_faces: int = 512,
    tolerance_pp: float = DEFAULT_TOLERANCE_PP,
    method: str = "minmax",
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    """Quantise with faces from `calibration_root` (keep them apart from the validation set),
    then measure the drop on `validation`; refuse (VariantRejected) beyond `tolerance_pp`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    parent = _fp32_source(source)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    faces = aligned_faces(calibration_root, calibration_faces, parent.template().size)
    partial = out.with_name(out.name + ".partial")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(partial),
                _FaceReader(faces),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=INT8_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
            )
        model = onnx.load(str(partial))
        onnx.checker.check_model(model)

        return _measured_variant(
            source,
            partial,
            out,
            parent,
            validation,
            model_id=weights_id(model),
            variant="int8",
            method=f"static QDQ, per-channel, uint8 activations / int8 weights, {method}",
            calibration_faces=len(faces),
            tolerance_pp=tolerance_pp,
            progress=progress,
            report=report,
        )
    finally:
        partial.unlink(missing_ok=True)


def make_bf16(
    source: Path,
    out: Path,
    validation: ValidationData,
    tolerance_pp: float = DEFAULT_TOLERANCE_PP,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> ModelContract:
    """The fp32 file's graph and weights unchanged, marked to run in OpenVINO at bfloat16
    precision; measured on that path here (so only on a CPU with native bfloat16) and refused
    (VariantRejected) when accuracy drops beyond `tolerance_pp`."""
    parent = _fp32_source(source)
    require_bf16(BF16_MEASURED_HERE)
    partial = out.with_name(out.name + ".partial")
    try:
        shutil.copyfile(source, partial)
        return _measured_variant(
            source,
            partial,
            out,
            parent,
            validation,
            model_id=weights_id(onnx.load(str(partial)), precision="bf16"),
            variant="bf16",
            method="bfloat16 inference precision, OpenVINO CPU plugin (weights unchanged)",
            calibration_faces=0,
            tolerance_pp=tolerance_pp,
            progress=progress,
            report=report,
        )
    finally:
        partial.unlink(missing_ok=True)


def _measured_variant(
    source: Path,
    partial: Path,
    out: Path,
    parent: ModelContract,
    validation: ValidationData,
    *,
    model_id: str,
    variant: str,
    method: str,
    calibration_faces: int,
    tolerance_pp: float,
    progress: bool,
    report: Callable[[str], None],
) -> ModelContract:
    """Measure the variant at `partial` against its fp32 source on `validation` (accuracy per
    protocol, per-face cosine), refuse it beyond `tolerance_pp`, otherwise write its contract
    with thresholds measured on itself and move it to `out`."""
    write_contract(
        partial,
        parent.model_copy(
            update={"model_id": model_id, "parent_model_id": parent.model_id, "variant": variant}
        ),
    )
    before = measure(Embedder(source), validation, progress)
    after = measure(Embedder(partial), validation, progress)
    images = sorted(before.vectors)
    cosine = _cosines(
        np.stack([before.vectors[p] for p in images]),
        np.stack([after.vectors[p] for p in images]),
    )
    changes = [
        AccuracyChange(
            protocol=a.protocol,
            accuracy_fp32=a.accuracy,
            accuracy=b.accuracy,
            change_pp=100 * (b.accuracy - a.accuracy),
        )
        for a, b in zip(before.validations, after.validations, strict=True)
    ]
    for change in changes:
        report(
            f"{variant} {change.protocol}: accuracy {100 * change.accuracy_fp32:.2f}% -> "
            f"{100 * change.accuracy:.2f}% ({change.change_pp:+.2f} pp)"
        )
    report(
        f"{variant} cosine to fp32 over {cosine.size} faces: min {cosine.min():.5f}, "
        f"1st percentile {np.percentile(cosine, 1):.5f}, median {np.median(cosine):.5f}"
    )
    worst = min(changes, key=lambda c: c.change_pp)
    if worst.change_pp < -tolerance_pp:
        raise VariantRejected(
            f"{variant} loses {-worst.change_pp:.2f} pp of accuracy on {worst.protocol} "
            f"(tolerance {tolerance_pp} pp); not written"
        )
    quantization = Quantization(
        method=method,
        calibration_faces=calibration_faces,
        faces_compared=int(cosine.size),
        min_cosine_to_fp32=float(cosine.min()),
        median_cosine_to_fp32=float(np.median(cosine)),
        accuracy=changes,
        tolerance_pp=tolerance_pp,
    )
    contract = parent.model_copy(
        update={
            "model_id": model_id,
            "parent_model_id": parent.model_id,
            "variant": variant,
            "exported_at": datetime.now(UTC),
            "calibration": after.calibration,
            "validation": after.validations,
            "parity": None,
            "quantization": quantization,
        }
    )
    write_contract(partial, contract)
    partial.replace(out)
    return contract
