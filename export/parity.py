"""Proof that an exported file computes what its source computes, on real aligned faces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.calibration import ValidationData
from service.vision.contract import Parity
from service.vision.embedder import Embedder
from training.data import IMAGE_SUFFIXES, load_rgb, to_tensor

# Per-face cosine between the checkpoint's and onnxruntime's embedding. float32 reorderings
# (batch-norm folding, fused kernels) stay near 1e-7; a wrong layer, flatten order or colour
# swap lands far below this.
FP32_MIN_COSINE = 0.99999
PARITY_BATCH_SIZES = (1, 8)
PARITY_FACES = 32


class ParityError(RuntimeError):
    pass


def aligned_faces(root: Path, limit: int, size: int = 112) -> np.ndarray:
    """Up to `limit` aligned faces found under `root`, uint8 (N, size, size, 3) RGB, in a
    stable order spread over the folder (every k-th file, not the first person's photos only)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no aligned faces under {root}")
    step = max(len(files) // limit, 1)
    return np.stack([load_rgb(p, size) for p in files[::step][:limit]])


def parity_faces(
    validation: ValidationData | None, parity_root: Path | None, size: int = 112
) -> np.ndarray:
    """The real faces every export is checked on: `parity_root`, else the validation set's."""
    if parity_root is None and validation is None:
        raise ValueError("parity needs real aligned faces: give validation data or parity faces")
    return aligned_faces(parity_root or validation.faces_for_parity(), PARITY_FACES, size)


@torch.no_grad()
def checkpoint_embeddings(backbone: nn.Module, faces: np.ndarray) -> np.ndarray:
    """What training and `facemargin evaluate` compute: to_tensor, backbone, L2 normalise."""
    batch = torch.stack([to_tensor(face) for face in faces])
    return torch.nn.functional.normalize(backbone.eval()(batch).float(), dim=1).numpy()


def run_in_batches(embedder: Embedder, faces: np.ndarray, batch_size: int) -> np.ndarray:
    chunks = [embedder.run(faces[i : i + batch_size])[0] for i in range(0, len(faces), batch_size)]
    return np.concatenate(chunks)


def compare(
    reference: np.ndarray,
    embedder: Embedder,
    faces: np.ndarray,
    what: str,
    min_cosine: float,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    report: Callable[[str], None] = print,
) -> Parity:
    """Run the file at each batch size and compare every face's embedding with `reference`;
    raise ParityError below `min_cosine`."""
    worst_cosine, worst_diff = 1.0, 0.0
    for batch_size in batch_sizes:
        got = run_in_batches(embedder, faces, batch_size)
        cosine = np.sum(got.astype(np.float64) * reference, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
        )
        diff = float(np.abs(got - reference).max())
        report(
            f"parity vs {what}, batch {batch_size}: min cosine {cosine.min():.8f}, "
            f"max |difference| {diff:.2e} over {len(faces)} faces"
        )
        worst_cosine, worst_diff = min(worst_cosine, float(cosine.min())), max(worst_diff, diff)
    if worst_cosine < min_cosine:
        raise ParityError(
            f"{embedder.path}: embeddings differ from {what}: min per-face cosine "
            f"{worst_cosine:.8f} < {min_cosine} (max |difference| {worst_diff:.2e})"
        )
    return Parity(
        reference=what,
        faces=len(faces),
        min_cosine=worst_cosine,
        max_abs_diff=worst_diff,
        batch_sizes=list(batch_sizes),
    )
