"""Training configuration: a TOML file and/or command-line flags, validated by pydantic."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Augmentation = Literal["standard", "strong"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path = Field(
        description="Aligned faces, one folder per identity (`facemargin prepare` output)."
    )
    out: Path = Field(description="Run folder: checkpoint, metrics log, plots.")
    backbone: str = "iresnet18"
    embedding_dim: int = Field(512, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_from: Path | None = Field(
        None,
        description="An exported facemargin ONNX model (fp32) to start from instead of random "
        "weights: its backbone weights are put back, the head is imprinted from class means.",
    )
    head: str | None = Field(
        "arcface", description="Softmax-family head; none for pure metric losses."
    )
    head_params: dict[str, float] = Field(
        default_factory=dict, description="e.g. {s = 64, m = 0.5}"
    )
    loss: str | None = Field(
        None, description="triplet, contrastive, or center (added to the head)."
    )
    loss_params: dict[str, float | str] = Field(default_factory=dict)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    l2sp: float = Field(
        0.0,
        ge=0,
        description="L2-SP (Li et al., 2018): decay the backbone towards its --init-from "
        "weights with this strength instead of towards zero, so fine-tuning stays near a "
        "pretrained start; 0 turns it off. The head keeps weight_decay.",
    )
    warmup_epochs: float = Field(1.0, ge=0)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(128, gt=1)
    images_per_identity: int = Field(4, ge=2, description="K of P×K batches for metric losses.")
    augmentation: Augmentation = Field(
        "standard",
        description="standard: mirror, colour, blur, low resolution; strong adds alignment "
        "jitter and random erasing (for small data sets that get memorised).",
    )
    grad_clip: float = Field(5.0, gt=0)
    seed: int = 0
    held_out: float = Field(
        0.1, ge=0, lt=1, description="Fraction of identities kept for validation."
    )
    min_images: int = Field(2, ge=1, description="Drop identities with fewer images.")
    max_identities: int | None = Field(None, gt=1, description="Use only the first N identities.")
    val_pairs: int = Field(
        2000, ge=0, description="Genuine (and as many impostor) validation pairs."
    )
    num_workers: int = Field(2, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="Mixed precision with grad scaling (CUDA only).")
    checkpoint_every: int = Field(
        0, ge=0, description="Also checkpoint every N steps (0: per epoch)."
    )
    log_every: int = Field(20, gt=0)

    @model_validator(mode="after")
    def _objective_is_complete(self) -> TrainConfig:
        from training.losses import LOSSES  # here, not above: torch only once a run is configured

        standalone = [n for n in LOSSES.names if LOSSES.trait(n, "pk_batches")]
        if self.head is None and (self.loss is None or not LOSSES.trait(self.loss, "pk_batches")):
            raise ValueError("without a head, the loss must be one of " + ", ".join(standalone))
        if self.loss is not None and LOSSES.trait(self.loss, "per_class") and self.head is None:
            raise ValueError(f"{self.loss} loss is added to a softmax-family head; set head")
        if self.l2sp and self.init_from is None:
            raise ValueError("l2sp pulls towards the --init-from weights; give init_from")
        if self.backbone == "onnx" and self.init_from is None:
            raise ValueError("backbone onnx trains the network of --init-from; give init_from")
        if self.metric_batches and self.batch_size % self.images_per_identity:
            raise ValueError("batch_size must be a multiple of images_per_identity for P×K batches")
        return self

    @property
    def metric_batches(self) -> bool:
        """P×K batches, for a loss that needs positives in every batch."""
        from training.losses import LOSSES

        return self.loss is not None and bool(LOSSES.trait(self.loss, "pk_batches"))


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The TOML file's values, then the flags that were given on top."""
    values: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as f:
            values = tomllib.load(f)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("head") in ("none", ""):
        values["head"] = None
    return TrainConfig(**values)
