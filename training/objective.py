"""What a run minimises: a margin head's cross-entropy, a loss on the embeddings, or both, and
the backbone joined to it as one module for (data-parallel, mixed-precision) training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.config import TrainConfig
from training.heads import build_head
from training.losses import LOSSES, build_loss


class Objective(nn.Module):
    """Embeddings and labels to the training loss: cross-entropy over a margin head's logits,
    plus (or instead of) a loss on the embeddings themselves."""

    def __init__(self, config: TrainConfig, num_classes: int) -> None:
        super().__init__()
        self.head = (
            build_head(config.head, config.embedding_dim, num_classes, **config.head_params)
            if config.head
            else None
        )
        extra: dict[str, Any] = dict(config.loss_params)
        if config.loss and LOSSES.trait(config.loss, "per_class"):
            extra |= {"num_classes": num_classes, "feat_dim": config.embedding_dim}
        self.embedding_loss = build_loss(config.loss, **extra) if config.loss else None

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.head(embeddings, labels) if self.head is not None else None
        loss = embeddings.new_zeros((), dtype=torch.float32)
        if logits is not None:
            loss = loss + F.cross_entropy(logits.float(), labels)
        if self.embedding_loss is not None:
            loss = loss + self.embedding_loss(embeddings, labels)
        return loss, logits


class TrainStep(nn.Module):
    """Backbone and objective as one module, so data-parallel training all-reduces the head's
    gradients along with the backbone's. The backbone may run in mixed precision; the margin
    arithmetic always runs in float32."""

    def __init__(self, backbone: nn.Module, objective: Objective, amp: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.amp = amp

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast(images.device.type, enabled=self.amp):
            embeddings = self.backbone(images)
        return self.objective(embeddings.float(), labels)
