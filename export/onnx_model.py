"""Write a trained backbone as a self-contained ONNX embedding model, and read/write the
contract stored in any ONNX file's metadata."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from service.vision.contract import (
    CONTRACT_KEY,
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    NORM_OUTPUT,
    ModelContract,
    parse_contract,
)
from training.data import PIXEL_MEAN, PIXEL_STD

DEFAULT_OPSET = 18


class EmbeddingNetwork(nn.Module):
    """The backbone with the pixel preprocessing in front and the normalisation behind, so
    the file's input is the aligner's output as it is: uint8 (N, 112, 112, 3) RGB."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The same arithmetic, in the same order, as training.data.to_tensor.
        x = (faces.permute(0, 3, 1, 2).to(torch.float32) - PIXEL_MEAN) / PIXEL_STD
        raw = self.backbone(x).to(torch.float32)
        norm = torch.linalg.vector_norm(raw, dim=1)
        # F.normalize's own guard against a zero vector.
        embedding = raw / norm.clamp_min(1e-12).unsqueeze(1)
        return embedding, norm


def export_embedding_network(backbone: nn.Module, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Trace and write the network with a dynamic batch dimension; checked by onnx.checker.
    The exporter's optimiser folds constants, batch norms into the convolution or linear
    layer before them included (training/warm_start.py undoes that to train on)."""
    network = EmbeddingNetwork(backbone).eval()
    # Trace with batch 2: a batch of 1 would be specialised away as a constant.
    dummy = torch.zeros(2, 112, 112, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(
            network,
            (dummy,),
            dynamo=True,
            dynamic_shapes={"faces": {0: torch.export.Dim("batch", min=1, max=4096)}},
            input_names=[INPUT_NAME],
            output_names=[EMBEDDING_OUTPUT, NORM_OUTPUT],
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def weights_id(model: onnx.ModelProto, precision: str | None = None) -> str:
    """sha256 over the initializers (name order, dtype, shape, bytes): the same weights give
    the same id whatever the export date or metadata; first 16 hex digits. A `precision` the
    weights are run at other than their own (bf16) is hashed too: the same weights computed
    in bfloat16 give other embeddings, and a gallery must not mix the two."""
    digest = hashlib.sha256()
    if precision is not None:
        digest.update(f"precision|{precision}|".encode())
    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        array = numpy_helper.to_array(tensor)
        digest.update(f"{tensor.name}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for node in model.graph.node:
        # Weights the optimiser turned into Constant nodes count too.
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    digest.update(numpy_helper.to_array(attribute.t).tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_contract(path: Path) -> ModelContract | None:
    model = onnx.load(str(path), load_external_data=False)
    return parse_contract({p.key: p.value for p in model.metadata_props})


def write_contract(path: Path, contract: ModelContract) -> None:
    """Replace the contract in the file (atomically: written beside it, then renamed)."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != CONTRACT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = CONTRACT_KEY
    entry.value = contract.model_dump_json()
    model.doc_string = (
        f"facemargin face-embedding model {contract.model_id} ({contract.variant}): "
        f"{contract.backbone}, {contract.embedding_dim}-d. Input {INPUT_NAME}: uint8 "
        f"(N, {contract.input.height}, {contract.input.width}, 3) RGB aligned to the "
        f"{contract.template().name} template. "
        f"Contract in metadata key {CONTRACT_KEY}."
    )
    onnx.checker.check_model(model)
    partial = path.with_name(path.name + ".partial")
    onnx.save(model, str(partial))
    partial.replace(path)
