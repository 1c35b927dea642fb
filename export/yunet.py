"""Convert OpenCV Zoo's YuNet face detector (`face_detection_yunet_2023mar.onnx`) so that
onnxruntime runs it at any input size.

The source file declares a fixed 1x3x640x640 input, but its graph is size-agnostic: its
Reshapes use -1 and its Resizes use scales, so any height and width that are multiples of 32
work. onnxruntime enforces declared input dimensions, so the conversion only rewrites the
declarations: the input becomes (1, 3, "height", "width"), every output (1, "anchors_S", D),
and the fixed intermediate shapes recorded for 640x640 (`value_info`) are dropped. Nodes and
weights are kept as they are. The source's name, its SHA-256 and its licence are recorded in
the file's metadata. The output is deterministic: converting the same source twice gives
identical bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import onnx

LICENCE = "MIT (OpenCV Zoo, (c) 2020 Shiqi Yu)"
CONVERTER = "facemargin export yunet"
_INPUT_DIMS = (1, 3, "height", "width")


def _set_dims(value: onnx.ValueInfoProto, dims: tuple[int | str, ...]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_yunet(source: Path, out: Path) -> None:
    """Write `source` (the 640x640 YuNet ONNX file) to `out` with a dynamic input size."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"YuNet source model not found: {source}")
    try:
        model = onnx.load(str(source))
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{source.name} is not an ONNX file: {error}") from error
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ValueError(f"{source.name}: expected one (1, 3, H, W) input, like YuNet's")
    _set_dims(inputs[0], _INPUT_DIMS)
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims) != 3 or not dims[2].dim_value:
            raise ValueError(f"{source.name}: output {output.name!r} is not (1, anchors, D)")
        # Output names are cls_8, obj_16, bbox_32, ...: the anchor count depends on the stride.
        stride = output.name.rsplit("_", 1)[-1]
        _set_dims(output, (1, f"anchors_{stride}", dims[2].dim_value))
    # Intermediate shapes were recorded for 640x640; at any other size they would be wrong.
    del graph.value_info[:]

    del model.metadata_props[:]
    for key, value in (
        ("source", source.name),
        ("source_sha256", _sha256(source)),
        ("licence", LICENCE),
        ("converter", CONVERTER),
    ):
        model.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ValueError(f"{source.name}: the converted graph is invalid: {error}") from error

    out.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    # Write beside the target and rename, so a failed run never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
