"""Embedding backbones for 112x112 aligned faces, and their complexity figures.

Every backbone takes a float tensor (N, 3, 112, 112): RGB, already normalised to [-1, 1] as
(x - 127.5) / 127.5. The normalisation itself lives elsewhere (`training.data` for training),
not here. Every backbone returns (N, embedding_dim) embeddings that are NOT L2-normalised:
their norm is a quality signal used downstream.

- IResNet-18/34/50/100: InsightFace arcface_torch `backbones/iresnet.py`, layer for layer
  (BN-conv-BN-PReLU-conv-BN blocks; BN-Dropout-FC-BN embedding tail), same initialisation.
- MobileFaceNet: the original paper's configuration (Chen et al. 2018, Table 1), not
  arcface_torch's wider `blocks=(1, 4, 6, 2), scale=2` variant, because the paper publishes
  figures to check against (0.99 M parameters, 221 M MACs at a 128-d embedding). The tail is
  arcface_torch's GDC: global depthwise 7x7 conv + BN, then Linear + BatchNorm1d.
- SphereFace-20: the 20-layer residual CNN of Liu et al. 2017 (Table 2; the authors'
  `sphereface_model.prototxt`), adapted to 112x112 input instead of the paper's 112x96, so its
  FC layer sees 7x7 instead of 7x6 maps (and holds 512*49 instead of 512*42 inputs).

All layers are static (no data-dependent control flow) so every backbone exports to ONNX with
a dynamic batch dimension.
"""

from __future__ import annotations

import itertools
from typing import TypedDict

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from training.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")

INPUT_SIZE = (1, 3, 112, 112)
# Four stride-2 stages take 112x112 down to the 7x7 maps every tail below is sized for.
FINAL_MAP = 7


# --- IResNet (arcface_torch) -------------------------------------------------------------


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut; no activation after the sum."""

    def __init__(self, inputs: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs, eps=1e-5)
        self.conv1 = _conv3x3(inputs, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        # Decided once here, so forward has no branch that depends on the data.
        self.downsample: nn.Module = (
            nn.Sequential(
                nn.Conv2d(inputs, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5),
            )
            if stride != 1 or inputs != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.downsample(x)


def _iresnet_stage(inputs: int, planes: int, blocks: int) -> nn.Sequential:
    # As arcface_torch: every stage, the first included, downsamples in its first block.
    first = IBasicBlock(inputs, planes, stride=2)
    return nn.Sequential(first, *(IBasicBlock(planes, planes) for _ in range(blocks - 1)))


class IResNet(nn.Module):
    def __init__(
        self, layers: tuple[int, int, int, int], embedding_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = _iresnet_stage(64, 64, layers[0])
        self.layer2 = _iresnet_stage(64, 128, layers[1])
        self.layer3 = _iresnet_stage(128, 256, layers[2])
        self.layer4 = _iresnet_stage(256, 512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        # A fully connected layer over the whole 7x7 map, not pooling: face crops are aligned,
        # so each position always holds the same facial region and deserves its own weights.
        self.fc = nn.Linear(512 * FINAL_MAP * FINAL_MAP, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        # As arcface_torch: the scale is pinned at 1, so this BN only centres and rescales by
        # batch statistics and cannot learn to shrink the embedding norm.
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # arcface_torch's own choice (not Kaiming); the BN before every conv makes the
                # scale of this initialisation matter little.
                nn.init.normal_(module.weight, 0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# --- MobileFaceNet (Chen et al. 2018) ----------------------------------------------------


def _register_iresnet(name: str, layers: tuple[int, int, int, int]) -> None:
    def build(embedding_dim: int, dropout: float) -> IResNet:
        return IResNet(layers, embedding_dim, dropout)

    BACKBONES.register(name)(build)


_register_iresnet("iresnet18", (2, 2, 2, 2))
_register_iresnet("iresnet34", (3, 4, 6, 3))
_register_iresnet("iresnet50", (3, 4, 14, 3))
_register_iresnet("iresnet100", (3, 13, 30, 3))


def _conv_bn(
    inputs: int,
    outputs: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    activation: bool = True,
    padding: int | None = None,
) -> nn.Sequential:
    """Conv + BN, with PReLU unless `activation` is False (the paper's "linear" layers)."""
    padding = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(inputs, outputs, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
    ]
    if activation:
        layers.append(nn.PReLU(outputs))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual (expand 1x1, depthwise 3x3, linear project 1x1), PReLU."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        self.body = nn.Sequential(
            _conv_bn(inputs, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, outputs, 1, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `residual` is fixed at construction, so this is not data-dependent control flow.
        return x + self.body(x) if self.residual else self.body(x)


# (expansion t, channels c, repeats n, first stride s): the paper's Table 1.
MOBILEFACENET_SETTINGS = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


def _mobilefacenet_body() -> nn.Sequential:
    layers: list[nn.Module] = [_conv_bn(3, 64, 3, 2), _conv_bn(64, 64, 3, groups=64)]
    inputs = 64
    for expansion, channels, repeats, stride in MOBILEFACENET_SETTINGS:
        for i in range(repeats):
            layers.append(Bottleneck(inputs, channels, stride if i == 0 else 1, expansion))
            inputs = channels
    layers.append(_conv_bn(inputs, 512, 1))
    return nn.Sequential(*layers)


@BACKBONES.register("mobilefacenet")
class MobileFaceNet(nn.Module):
    def __init__(self, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.body = _mobilefacenet_body()
        # Global depthwise convolution: a learned weight per 7x7 position, where global
        # average pooling would weigh the eyes and the background corners alike.
        self.gdc = _conv_bn(512, 512, FINAL_MAP, groups=512, activation=False, padding=0)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(512, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # As arcface_torch's mobilefacenet.py.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.gdc(self.body(x)), 1)
        return self.features(self.linear(self.dropout(x)))


# --- SphereFace-20 (Liu et al. 2017) -----------------------------------------------------


class SphereUnit(nn.Module):
    """Two 3x3 convs with PReLU and an identity shortcut; no BN, as in the paper."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # The prototxt freezes these biases at zero (lr_mult 0), i.e. the convs have none.
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.prelu1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.prelu2 = nn.PReLU(channels)
        for conv in (self.conv1, self.conv2):
            # The authors' N(0, 0.01): without BN, near-zero residual branches keep the
            # 20-layer stack close to its shortcuts, so activations do not blow up at init.
            nn.init.normal_(conv.weight, 0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def _sphere_stage(inputs: int, channels: int, units: int) -> nn.Sequential:
    down = nn.Conv2d(inputs, channels, 3, 2, 1)
    # Caffe's "xavier" filler: uniform with variance 1 / fan_in (LeCun), i.e. Kaiming with a
    # linear gain.
    nn.init.kaiming_uniform_(down.weight, nonlinearity="linear")
    nn.init.zeros_(down.bias)
    return nn.Sequential(down, nn.PReLU(channels), *(SphereUnit(channels) for _ in range(units)))


@BACKBONES.register("sphereface20")
class SphereFace20(nn.Module):
    # (channels, residual units) per stage: the paper's Table 2, 20-layer column.
    STAGES = ((64, 1), (128, 2), (256, 4), (512, 1))

    def __init__(self, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        stages, inputs = [], 3
        for channels, units in self.STAGES:
            stages.append(_sphere_stage(inputs, channels, units))
            inputs = channels
        self.body = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * FINAL_MAP * FINAL_MAP, embedding_dim)
        nn.init.kaiming_uniform_(self.fc.weight, nonlinearity="linear")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.body(x), 1)))


BACKBONE_NAMES: tuple[str, ...] = BACKBONES.names


def build_backbone(name: str, embedding_dim: int = 512, dropout: float = 0.0) -> nn.Module:
    """A freshly initialised backbone mapping (N, 3, 112, 112) faces to (N, embedding_dim).

    Input: RGB float, normalised to [-1, 1] as (x - 127.5) / 127.5 by the caller. Output:
    raw embeddings, not L2-normalised. `dropout` applies just before the embedding layer.
    """
    return BACKBONES.build(name, embedding_dim, dropout)


# --- Complexity --------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not: IResNet's pinned BN scale counts too, as it does in
    the published figures."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = INPUT_SIZE) -> int:
    """Multiply-accumulates of one eval-mode forward pass over a batch of `input_size`.

    Counts convolutions and linear layers (matrix products) only, the convention of published
    figures: BN, PReLU, additions and biases are not counted. FlopCounterMode reports 2 FLOPs
    per MAC, hence the halving.
    """
    # The counter needs only shapes, so run on meta copies of the weights: no arithmetic is
    # done, even IResNet-100 counts in milliseconds, and the model itself is left untouched.
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    was_training = model.training
    model.eval()  # BatchNorm1d refuses a batch of one in training mode.
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, meta, (torch.empty(input_size, device="meta"),))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


class ComplexityRow(TypedDict):
    name: str
    embedding_dim: int
    params: int
    macs: int
    published_params: float | None
    published_macs: float | None


# Published figures for 112x112 input, keyed by (backbone, embedding_dim): IResNet from
# InsightFace's arcface_torch model zoo; MobileFaceNet from its paper, which uses 128-d.
PUBLISHED: dict[tuple[str, int], tuple[float, float]] = {
    ("iresnet50", 512): (43.6e6, 6.3e9),
    ("iresnet100", 512): (65.2e6, 12.1e9),
    ("mobilefacenet", 128): (0.99e6, 0.221e9),
}


def _complexity_row(name: str, embedding_dim: int) -> ComplexityRow:
    with torch.no_grad():
        model = build_backbone(name, embedding_dim).eval()
    published = PUBLISHED.get((name, embedding_dim))
    return {
        "name": name,
        "embedding_dim": embedding_dim,
        "params": count_parameters(model),
        "macs": count_macs(model),
        "published_params": published[0] if published else None,
        "published_macs": published[1] if published else None,
    }


def complexity_table() -> list[ComplexityRow]:
    """Parameters and MACs of every backbone at 512-d (built on CPU, eval mode, no grad),
    plus MobileFaceNet at 128-d, the size its paper's figures are for."""
    rows = [_complexity_row(name, 512) for name in BACKBONE_NAMES]
    rows.append(_complexity_row("mobilefacenet", 128))
    return rows


def _millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def _billions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f}"


def format_complexity_table(rows: list[ComplexityRow]) -> str:
    """An aligned plain-text table: params in millions, MACs in billions (GMAC)."""
    header = ("backbone", "emb", "params (M)", "GMAC", "published (M)", "published GMAC")
    body = [
        (
            r["name"],
            str(r["embedding_dim"]),
            _millions(r["params"]),
            _billions(r["macs"]),
            _millions(r["published_params"]),
            _billions(r["published_macs"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        # Names read best left-aligned, numbers right-aligned so their decimals line up.
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    lines = [render(header), "  ".join("-" * w for w in widths), *map(render, body)]
    lines.append(
        "112x112 input. MACs count convolutions and linear layers (not BN, PReLU, additions);"
        " params include frozen ones."
    )
    return "\n".join(lines)
