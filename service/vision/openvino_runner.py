"""A contract model run by OpenVINO's CPU plugin at bfloat16 inference precision: the `bf16`
variant (`facemargin export bf16`).

Why a second runtime: on CPUs with native bfloat16 (Intel AMX, AVX-512 BF16) OpenVINO runs
the shipped OMZ embedder 2.5 times faster than onnxruntime at float32, and onnxruntime has no
bfloat16 path on x86. The embeddings move (per-face cosine to float32 about 0.9998 median),
so such a file is a variant of its own: its own model id, its thresholds measured on this
very path, its accuracy change recorded and bounded (`export/variants.py`). On a CPU without
native bfloat16 OpenVINO would quietly compute in float32, which is not what the thresholds
were measured on, so that is refused rather than served.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from service.vision.contract import EMBEDDING_OUTPUT, INPUT_NAME, NORM_OUTPUT

INSTALL_HINT = "pip install 'facemargin[openvino]'"
PROVIDER_NAME = "OpenVINO CPU (bf16)"


class OpenVinoUnavailable(RuntimeError):
    """This process cannot run a bf16 variant: no openvino package, or no native bf16."""


def require_bf16(what: str) -> None:
    """Raise OpenVinoUnavailable, saying why, unless `what` can run here at bfloat16."""
    try:
        import openvino as ov
    except ImportError:
        raise OpenVinoUnavailable(f"{what} needs openvino: {INSTALL_HINT}") from None
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise OpenVinoUnavailable(
            f"{what} needs a CPU with native bfloat16 (AMX or AVX-512 BF16), and this one has none"
        )


def bf16_capable() -> bool:
    """Whether OpenVINO is installed and this CPU computes bfloat16 natively."""
    try:
        require_bf16("bf16")
    except OpenVinoUnavailable:
        return False
    return True


class OpenVinoBf16Runner:
    """One compiled model, shared by every thread: each call borrows one of the compiled
    model's infer requests, so concurrent batches run in OpenVINO's parallel streams. Its
    caller has checked `require_bf16` (the Embedder does, with the file's contract)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "bf16"}
        if threads:
            # As onnxruntime is configured: this many threads, one stream.
            config |= {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        else:
            config |= {"PERFORMANCE_HINT": "THROUGHPUT"}
        self.compiled = core.compile_model(str(path), "CPU", config)
        self._outputs = (self.compiled.output(EMBEDDING_OUTPUT), self.compiled.output(NORM_OUTPUT))
        count = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(count):
            self._requests.put(self.compiled.create_infer_request())

    def run(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, norms) for one batch of uint8 (N, S, S, 3) faces."""
        request = self._requests.get()
        try:
            results = request.infer({INPUT_NAME: faces})
            # Copies: the request's output buffers are reused by its next call.
            return (
                np.array(results[self._outputs[0]], dtype=np.float32),
                np.array(results[self._outputs[1]], dtype=np.float32).reshape(-1),
            )
        finally:
            self._requests.put(request)
