"""One registry for backbones, heads and losses: a new objective is one decorated class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from training.backbones import BACKBONES
from training.config import TrainConfig
from training.heads import HEADS
from training.losses import LOSSES
from training.objective import Objective
from training.registry import Registry


def test_names_hparams_traits_and_refusals():
    registry: Registry[object] = Registry("widget")

    @registry.register("plain")
    class Plain:
        def __init__(self, size: int, *, depth: int = 2, width: float = 1.0) -> None:
            self.size, self.depth = size, depth

    @registry.register("made", special=True)
    def made(*, colour: str = "red") -> str:
        return colour

    assert registry.names == ("plain", "made")
    assert registry.entry("Plain").hparams == ("depth", "width")
    assert registry.build("plain", 3, depth=4).depth == 4
    assert registry.build("made", colour="blue") == "blue"
    assert registry.trait("made", "special") is True and registry.trait("plain", "special") is None
    with pytest.raises(ValueError, match="unknown widget 'nope'; valid widgets: plain, made"):
        registry.build("nope")
    with pytest.raises(ValueError, match="widget 'plain' does not take size2; it takes: depth"):
        registry.build("plain", 1, size2=3)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("plain")(Plain)


def test_the_shipped_objectives_declare_what_they_need():
    assert [n for n in LOSSES.names if LOSSES.trait(n, "pk_batches")] == ["triplet", "contrastive"]
    assert [n for n in LOSSES.names if LOSSES.trait(n, "per_class")] == ["center"]
    assert "cosface" in HEADS.names and "mobilefacenet" in BACKBONES.names


@pytest.fixture
def quadruplet():
    """A loss defined outside the trainer's code, registered as a user would."""

    @LOSSES.register("pairwise_test", pk_batches=True)
    class PairwiseTest(nn.Module):
        def __init__(self, *, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.scale * embeddings.pow(2).mean()

    yield "pairwise_test"
    LOSSES._entries.pop("pairwise_test")


def test_a_registered_loss_trains_without_touching_config_or_trainer(quadruplet, tmp_path: Path):
    config = TrainConfig(
        data=tmp_path, out=tmp_path, head=None, loss=quadruplet, loss_params={"scale": 2.0}
    )
    assert config.metric_batches  # its trait, not its name, asks for P×K batches
    objective = Objective(config, num_classes=5)
    loss, logits = objective(torch.ones(4, 512), torch.tensor([0, 0, 1, 1]))
    assert logits is None and loss.item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="without a head, the loss must be one of"):
        TrainConfig(data=tmp_path, out=tmp_path, head=None, loss="center")
