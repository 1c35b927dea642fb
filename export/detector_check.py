"""Proof that the exported MTCNN ONNX files compute what the PyTorch nets compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

# Generous for float32 nets this small; real mismatches (wrong layer, wrong flatten order)
# are of order 1e-1.
PARITY_TOLERANCE = 1e-4
_PROBE_SHAPES = {
    "pnet": [(1, 3, 12, 12), (2, 3, 57, 83)],
    "rnet": [(5, 3, 24, 24)],
    "onet": [(5, 3, 48, 48)],
}


def parity_report(nets: dict[str, nn.Module], model_dir: Path, seed: int = 0) -> dict[str, float]:
    """Max absolute output difference per net on random inputs; raises if over tolerance."""
    rng = np.random.default_rng(seed)
    report: dict[str, float] = {}
    for name, net in nets.items():
        session = ort.InferenceSession(
            str(model_dir / f"mtcnn_{name}.onnx"), providers=["CPUExecutionProvider"]
        )
        worst = 0.0
        for shape in _PROBE_SHAPES[name]:
            x = rng.uniform(-1, 1, size=shape).astype(np.float32)
            with torch.no_grad():
                expected = [t.numpy() for t in net(torch.from_numpy(x))]
            got = session.run(None, {"input": x})
            worst = max(
                worst, *(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
            )
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"{name}: ONNX output differs from PyTorch by {worst:.2e}")
        report[name] = worst
    return report
