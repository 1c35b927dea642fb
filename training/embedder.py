"""Run a trained backbone over aligned faces: checkpoint loading and batched embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.backbones import build_backbone
from training.config import TrainConfig
from training.data import IMAGE_SUFFIXES, crop_size, load_rgb, to_tensor
from training.onnx_network import ONNX_BACKBONE, ForeignBackbone


def read_checkpoint(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A `facemargin train` checkpoint's payload (format checked)."""
    payload = torch.load(checkpoint, map_location=device, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != "facemargin-checkpoint-1":
        raise ValueError(f"{checkpoint} is not a facemargin training checkpoint")
    return payload


def backbone_from_payload(
    payload: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """The embedding network, in eval mode; the head and optimiser state are training
    devices and are not loaded."""
    config = TrainConfig(**payload["config"])
    if config.backbone == ONNX_BACKBONE:
        backbone: nn.Module = ForeignBackbone(payload["init_model"])
    else:
        backbone = build_backbone(config.backbone, config.embedding_dim, config.dropout)
    backbone.load_state_dict(payload["backbone"])
    return backbone.to(device).eval(), config


def load_backbone(
    checkpoint: Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    return backbone_from_payload(read_checkpoint(checkpoint, device), device)


def resolve_aligned(root: Path, relative: str) -> Path | None:
    """The aligned file for a protocol path: `prepare` keeps the layout but may change the
    suffix (photo.jpg -> photo.png)."""
    exact = root / relative
    if exact.is_file():
        return exact
    for suffix in IMAGE_SUFFIXES:
        candidate = exact.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


@torch.no_grad()
def embed_dataset(
    backbone: nn.Module,
    root: Path,
    paths: list[str],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    flip: bool = False,
) -> np.ndarray:
    """L2-normalised embeddings (N, d), float32; a row is NaN where no aligned face exists
    (the detector found none), so callers count that image as an error, not a skip.

    `flip` adds the mirrored face's embedding before normalising, the usual test-time
    augmentation."""
    was_training = backbone.training
    backbone.eval()
    found = [(i, resolve_aligned(root, p)) for i, p in enumerate(paths)]
    present = [(i, path) for i, path in found if path is not None]
    out: np.ndarray | None = None
    # One template per aligned tree, so the first face gives every face's size.
    size = crop_size(present[0][1]) if present else 0
    for start in range(0, len(present), batch_size):
        chunk = present[start : start + batch_size]
        images = torch.stack([to_tensor(load_rgb(path, size)) for _, path in chunk]).to(device)
        embeddings = backbone(images).float()
        if flip:
            embeddings = embeddings + backbone(images.flip(3)).float()
        embeddings = torch.nn.functional.normalize(embeddings, dim=1).cpu().numpy()
        if out is None:
            out = np.full((len(paths), embeddings.shape[1]), np.nan, dtype=np.float32)
        out[[i for i, _ in chunk]] = embeddings
    backbone.train(was_training)
    if out is None:
        dim = int(getattr(backbone, "embedding_dim", 512))
        out = np.full((len(paths), dim), np.nan, dtype=np.float32)
    return out
