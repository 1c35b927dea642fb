"""A foreign embedder's network, read from its contract ONNX file, as a trainable PyTorch module.

Foreign embedders (the converted Open Model Zoo face-reidentification-retail-0095 first) are
none of our backbones, so `--init-from` cannot rebuild them from `training/backbones.py`.
Their graphs, as our converters write them, use a handful of operators; this module runs
such a graph with torch operators, in the file's own node order, with every float
initializer of rank 1 or more as a trainable parameter (the convolution weights and the
biases the IR keeps as separate Adds alike).

Why not `onnx2torch` from the package registry: it requires torchvision, whose PyPI build
pulls a different torch (a multi-GB CUDA build here), and it keeps the Add biases as frozen
buffers. Why no batch norm: the source folded it into the convolutions, and fine-tuning a
pretrained net at a small learning rate does not need it back. The PReLU slopes arrive as
LeakyRelu attributes (one scalar per layer, converted that way for inference speed) and stay
fixed: 48 scalars against 1.1 M weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from service.vision.contract import ModelContract, parse_contract
from training.data import PIXEL_MEAN, PIXEL_STD

Attributes = dict[str, object]


def _conv(x: torch.Tensor, w: torch.Tensor, *rest: torch.Tensor, **a: object) -> torch.Tensor:
    pads = list(a.get("pads", [0, 0, 0, 0]))  # type: ignore[arg-type]
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x = F.pad(x, (left, right, top, bottom))
        top = left = 0
    return F.conv2d(
        x,
        w,
        rest[0] if rest else None,
        stride=tuple(a.get("strides", [1, 1])),  # type: ignore[arg-type]
        padding=(top, left),
        dilation=tuple(a.get("dilations", [1, 1])),  # type: ignore[arg-type]
        groups=int(a.get("group", 1)),  # type: ignore[arg-type]
    )


def _average_pool(x: torch.Tensor, **a: object) -> torch.Tensor:
    pads = list(a.get("pads", [0, 0, 0, 0]))  # type: ignore[arg-type]
    if pads[:2] != pads[2:]:
        raise ValueError("AveragePool with asymmetric padding is not supported")
    return F.avg_pool2d(
        x,
        tuple(a["kernel_shape"]),  # type: ignore[arg-type]
        stride=tuple(a.get("strides", a["kernel_shape"])),  # type: ignore[arg-type]
        padding=tuple(pads[:2]),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
    )


OPERATORS: dict[str, Callable[..., torch.Tensor]] = {
    "Conv": _conv,
    "Add": lambda x, y: x + y,
    "Sub": lambda x, y: x - y,
    "Mul": lambda x, y: x * y,
    "Div": lambda x, y: x / y,
    "Relu": lambda x: F.relu(x),
    "LeakyRelu": lambda x, **a: F.leaky_relu(x, float(a.get("alpha", 0.01))),  # type: ignore[arg-type]
    "PRelu": lambda x, slope: torch.where(x >= 0, x, x * slope),
    "Sigmoid": torch.sigmoid,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda x: x.mean(dim=(2, 3), keepdim=True),
    "Flatten": lambda x, **a: torch.flatten(x, int(a.get("axis", 1))),  # type: ignore[arg-type]
}


class OnnxNetwork(nn.Module):
    """A single-input, single-output float graph executed with torch operators."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - OPERATORS.keys())
        if unsupported:
            raise ValueError(
                f"cannot train this network: operators {', '.join(unsupported)} are not "
                f"supported (supported: {', '.join(sorted(OPERATORS))})"
            )
        initializers = {t.name for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ValueError("expected one image input and one output")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        # ParameterDict keys cannot hold dots; the slot index keeps names unique and stable.
        self.weights = nn.ParameterDict()
        self.constants: dict[str, torch.Tensor] = {}
        self._slot: dict[str, str] = {}
        for i, tensor in enumerate(graph.initializer):
            value = torch.from_numpy(np.array(numpy_helper.to_array(tensor), dtype=np.float32))
            if value.dim() == 0:
                self.constants[tensor.name] = value
            else:
                self._slot[tensor.name] = f"w{i}"
                self.weights[f"w{i}"] = nn.Parameter(value)
        self.nodes = [
            (
                node.op_type,
                list(node.input),
                node.output[0],
                {a.name: helper.get_attribute_value(a) for a in node.attribute},
            )
            for node in graph.node
        ]

    def _value(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in values:
            return values[name]
        if name in self._slot:
            return self.weights[self._slot[name]]
        return self.constants[name].to(next(iter(values.values())).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input_name: x}
        for op, inputs, output, attributes in self.nodes:
            args = [self._value(name, values) for name in inputs if name]
            values[output] = OPERATORS[op](*args, **attributes)
        return values[self.output_name]


def source_contract(source: bytes) -> ModelContract:
    """The contract inside a model file's bytes (the trainer only opens contract models)."""
    model = onnx.load_from_string(source)
    contract = parse_contract({p.key: p.value for p in model.metadata_props})
    if contract is None:
        raise ValueError("the source model has no facemargin contract")
    return contract


ONNX_BACKBONE = "onnx"  # the --backbone name for "the network of --init-from, as it is"


class ForeignBackbone(nn.Module):
    """A contract model's network behind our training input.

    Training feeds every backbone `training.data.to_tensor` output, RGB scaled as
    (x - 127.5) / 127.5; this module turns that back into what the foreign network was
    trained on (for OMZ: BGR, 0-255), exactly as the exported file's own preprocessing does,
    so training and serving see the same numbers. `source` is the whole contract file, kept
    so a checkpoint can rebuild the module and the export can write the trained weights
    back into the same graph.
    """

    def __init__(self, source: bytes) -> None:
        super().__init__()
        from export.wrap import unwrap

        self.source = source
        self.graph, self.convention = unwrap(onnx.load_from_string(source))
        self.network = OnnxNetwork(self.graph)

    @classmethod
    def from_file(cls, path: Path) -> ForeignBackbone:
        return cls(Path(path).read_bytes())

    def trained_graph(self) -> onnx.ModelProto:
        """The source network with this module's current weights in place of its own."""
        graph = onnx.ModelProto()
        graph.CopyFrom(self.graph)
        for tensor in graph.graph.initializer:
            slot = self.network._slot.get(tensor.name)
            if slot is not None:
                value = self.network.weights[slot].detach().cpu().numpy().astype(np.float32)
                tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * PIXEL_STD + PIXEL_MEAN
        if self.convention.bgr:
            pixels = pixels.flip(1)
        return self.network((pixels - self.convention.mean) / self.convention.std)
