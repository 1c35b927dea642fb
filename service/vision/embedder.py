"""Run a facemargin embedding model (ONNX with its contract) on aligned faces.

The one inference path: the service, `facemargin export`'s threshold calibration and the
benchmarks all call this class, so a threshold is always measured by the code that will apply
it. onnxruntime runs every file except a `bf16` variant, which OpenVINO runs at the precision
its thresholds were measured at (`openvino_runner.py`).
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
from service.vision.openvino_runner import PROVIDER_NAME as BF16_PROVIDER
from service.vision.openvino_runner import OpenVinoBf16Runner, OpenVinoUnavailable, require_bf16


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


def _checked_contract(session: ort.InferenceSession, path: Path) -> ModelContract:
    """The file's contract, after checking it has our input and outputs and that this process
    can run its variant."""
    contract = parse_contract(session.get_modelmeta().custom_metadata_map)
    if contract is None:
        raise ModelContractError(
            f"{path} has no facemargin contract; "
            "wrap it with: facemargin export wrap MODEL.onnx OUT.onnx"
        )
    if INPUT_NAME not in {i.name for i in session.get_inputs()}:
        raise ModelContractError(f"{path} has no input named {INPUT_NAME!r}")
    if not {EMBEDDING_OUTPUT, NORM_OUTPUT} <= {o.name for o in session.get_outputs()}:
        raise ModelContractError(
            f"{path} lacks the outputs {EMBEDDING_OUTPUT!r} and {NORM_OUTPUT!r}"
        )
    if contract.variant == "bf16":
        try:
            require_bf16(f"{path}, a bf16 variant (serve its fp32 parent otherwise),")
        except OpenVinoUnavailable as error:
            raise ModelContractError(str(error)) from None
    return contract


def check_servable(path: Path) -> ModelContract:
    """What `Embedder(path)` would refuse, refused before a server starts (one line, not a
    start-up traceback): a missing file, no contract, a variant this machine cannot run."""
    path = Path(path)
    if not path.is_file():
        raise ModelContractError(f"{path}: no such model file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own untyped errors for files it cannot read
        raise ModelContractError(f"{path}: not a loadable ONNX model ({error})") from None
    return _checked_contract(session, path)


class Embedder:
    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.path = Path(path)
        wanted = providers or ["CPUExecutionProvider"]
        session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads), providers=wanted
        )
        if wanted[0] != "CPUExecutionProvider" and session.get_providers()[0] != wanted[0]:
            # onnxruntime drops a provider that fails to initialise (no driver, no device).
            raise ModelContractError(f"{wanted[0]} did not start; refusing to fall back to CPU")
        self.contract: ModelContract = _checked_contract(session, self.path)
        if self.contract.variant == "bf16" and wanted[0] != "CPUExecutionProvider":
            raise ModelContractError(
                f"{self.path} is a bf16 variant, which runs on the CPU; for {wanted[0]} "
                "serve its fp32 parent (or an fp16 variant)"
            )
        # Resolved once: every request aligns to it.
        self.template: Template = self.contract.template()
        self.batch_size = batch_size
        # A bf16 variant runs in OpenVINO only; its onnxruntime session was for the checks.
        self._bf16 = (
            OpenVinoBf16Runner(self.path, threads) if self.contract.variant == "bf16" else None
        )
        self._session = None if self._bf16 is not None else session

    @property
    def providers(self) -> list[str]:
        if self._session is None:
            return [BF16_PROVIDER]
        return self._session.get_providers()

    def run(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, norms) of one batch exactly as given, on this file's runtime."""
        if self._session is None:
            assert self._bf16 is not None
            return self._bf16.run(faces)
        vectors, norms = self._session.run([EMBEDDING_OUTPUT, NORM_OUTPUT], {INPUT_NAME: faces})
        return vectors, norms

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
            vector, norm = self.run(chunk)
            vectors.append(vector)
            norms.append(norm)
        return Embeddings(np.concatenate(vectors), np.concatenate(norms))
