"""Run a facemargin embedding model (ONNX with its contract) on aligned faces.

The one inference path: the service, `facemargin export`'s threshold calibration and the
benchmarks all call this class, so a threshold is always measured by the code that will apply
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.vision.alignment import Template
from service.vision.contract import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    NORM_OUTPUT,
    ModelContract,
    parse_contract,
)


class ModelContractError(ValueError):
    """The file is not a servable facemargin embedding model."""


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 (N, d), unit length
    norms: np.ndarray  # float32 (N,), before normalisation


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Batches come in every size from 1 to the batch cap, and onnxruntime keeps a memory plan
    # per input shape it has seen: about 35 MB of a server's resident memory after its first
    # hundred requests (bench/memory.py), for no measurable speed.
    options.enable_mem_pattern = False
    # Idle intra-op threads spinning for work burn the cores detection needs on a small box.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def choose_providers(kind: str) -> list[str]:
    """onnxruntime providers for 'cpu', 'cuda' (required) or 'auto'. Raises when CUDA is
    required but this onnxruntime build or machine has none: never a silent CPU fallback."""
    available = ort.get_available_providers()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind == "cuda":
        raise ModelContractError(
            "FACEMARGIN_PROVIDER=cuda but onnxruntime offers only "
            f"{', '.join(available)} (install the gpu extra and run with a GPU)"
        )
    return ["CPUExecutionProvider"]


class Embedder:
    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path),
            sess_options=session_options(threads),
            providers=providers or ["CPUExecutionProvider"],
        )
        wanted = providers or ["CPUExecutionProvider"]
        if wanted[0] != "CPUExecutionProvider" and self.session.get_providers()[0] != wanted[0]:
            # onnxruntime drops a provider that fails to initialise (no driver, no device).
            raise ModelContractError(f"{wanted[0]} did not start; refusing to fall back to CPU")
        contract = parse_contract(self.session.get_modelmeta().custom_metadata_map)
        if contract is None:
            raise ModelContractError(
                f"{self.path} has no facemargin contract; "
                "wrap it with: facemargin export wrap MODEL.onnx OUT.onnx"
            )
        self.contract: ModelContract = contract
        # Resolved once: every request aligns to it.
        self.template: Template = contract.template()
        self.batch_size = batch_size
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise ModelContractError(f"{self.path} has no input named {INPUT_NAME!r}")
        outputs = {o.name for o in self.session.get_outputs()}
        if not {EMBEDDING_OUTPUT, NORM_OUTPUT} <= outputs:
            raise ModelContractError(
                f"{self.path} lacks the outputs {EMBEDDING_OUTPUT!r} and {NORM_OUTPUT!r}"
            )

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def embed(self, faces: np.ndarray) -> Embeddings:
        """Embeddings for faces aligned to the contract's template, uint8 (N, size, size, 3)
        RGB, in chunks of batch_size."""
        spec = self.contract.input
        expected = (spec.height, spec.width, spec.channels)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != expected:
            raise ValueError(
                f"faces must be uint8 (N, {', '.join(map(str, expected))}), "
                f"got {faces.dtype} {faces.shape}"
            )
        if len(faces) == 0:
            dim = self.contract.embedding_dim
            return Embeddings(np.zeros((0, dim), np.float32), np.zeros(0, np.float32))
        vectors, norms = [], []
        for start in range(0, len(faces), self.batch_size):
            chunk = np.ascontiguousarray(faces[start : start + self.batch_size])
            vector, norm = self.session.run([EMBEDDING_OUTPUT, NORM_OUTPUT], {INPUT_NAME: chunk})
            vectors.append(vector)
            norms.append(norm)
        return Embeddings(np.concatenate(vectors), np.concatenate(norms))
