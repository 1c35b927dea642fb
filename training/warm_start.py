"""Continue training from an exported model: the ONNX file's weights back into a backbone.

A session's run folder does not outlive the machine it ran on, but the shipped ONNX file
does, so a run that starts from it carries the training forward across machines.

The exporter folds every batch norm into the convolution (or linear layer) in front of it,
so the file holds W' = a·W and b' = a·(−μ) + β per channel, and the batch norm's own
parameters are gone. Any (γ, β, μ, σ²) with γ·(z − μ)/√(σ² + ε) + β = z + b' gives the same
eval-mode network; we choose μ and σ² as the measured mean and variance of z on training
faces, γ = √(σ² + ε) and β = μ + b', so that in training mode, where batch statistics replace
μ and σ², each layer behaves as it did before export instead of being re-normalised to a
different scale.

The margin head is not in the file. It is imprinted (Qi et al., 2018): each class's weight
starts as the direction of the mean embedding of that identity's training faces, which is
where a trained normalised head's weights lie, so the first steps train the backbone and do
not spend themselves on a random head. A few faces per identity give the direction; all of
them would cost minutes more of embedding for little.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from service.vision.embedder import Embedder
from training.data import PIXEL_MEAN, PIXEL_STD, FaceIndex, load_rgb

FOLDED_BIAS_SUFFIX = "_bias"  # the exporter names a folded bias after the weight it joined
PRODUCERS = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Below this cosine between the rebuilt network and onnxruntime, the file's weights were not
# put back where they came from (a different backbone layout, or a batch norm that the
# exporter could not fold).
MIN_AGREEMENT = 0.9999


def open_exported(path: Path) -> Embedder:
    """The exported model as the service runs it (refused without a facemargin contract);
    it checks the rebuilt network and imprints the head."""
    embedder = Embedder(path)
    if embedder.contract.variant != "fp32":
        raise ValueError(
            f"{path} is a {embedder.contract.variant} variant; start from the fp32 model"
        )
    return embedder


def _prelu_slopes(model: onnx.ModelProto) -> list[np.ndarray]:
    """PReLU slopes in graph order (the exporter gives them anonymous names)."""
    weights = {t.name: t for t in model.graph.initializer}
    return [
        numpy_helper.to_array(weights[node.input[1]]).reshape(-1)
        for node in model.graph.node
        if node.op_type == "PRelu"
    ]


def _producer_of(backbone: nn.Module) -> dict[str, str]:
    """Each batch norm's name -> the conv or linear layer whose output it normalises: the one
    registered just before it, as `_conv_bn` and the embedding tail build them."""
    pairs: dict[str, str] = {}
    previous: str | None = None
    for name, module in backbone.named_modules():
        if isinstance(module, NORMS):
            if previous is None:
                raise ValueError(f"batch norm {name} follows no conv or linear layer")
            pairs[name] = previous
            previous = None
        elif isinstance(module, PRODUCERS):
            previous = name
    return pairs


def load_exported_weights(backbone: nn.Module, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Put the file's weights into `backbone` with every batch norm as the identity plus the
    folded bias; return those biases by batch-norm name for `recalibrate_batch_norm`."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    modules = dict(backbone.named_modules())
    norm_of = {producer: norm for norm, producer in _producer_of(backbone).items()}
    biases: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, module in modules.items():
            if not isinstance(module, PRODUCERS):
                continue
            key = f"backbone.{name}.weight"
            if key not in weights:
                raise ValueError(f"the file has no weight for {name}; is it this backbone?")
            _copy(module.weight, weights[key], key)
            bias = weights.get(key + FOLDED_BIAS_SUFFIX, weights.get(f"backbone.{name}.bias"))
            norm = norm_of.get(name)
            if norm is None:
                if module.bias is not None:
                    _copy(module.bias, bias, f"backbone.{name}.bias")
                continue
            if bias is None:
                raise ValueError(f"{name}'s batch norm was not folded into it in the file")
            bn = modules[norm]
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.tensor(bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            biases[norm] = bias
        prelus = [m for m in modules.values() if isinstance(m, nn.PReLU)]
        slopes = _prelu_slopes(model)
        if len(prelus) != len(slopes):
            raise ValueError(f"the file has {len(slopes)} PReLUs, the backbone {len(prelus)}")
        for prelu, slope in zip(prelus, slopes, strict=True):
            _copy(prelu.weight, slope, "PReLU slope")
    return biases


def _copy(target: torch.Tensor, source: np.ndarray | None, name: str) -> None:
    if source is None or tuple(source.shape) != tuple(target.shape):
        shape = None if source is None else tuple(source.shape)
        raise ValueError(f"{name}: the file has shape {shape}, the backbone {tuple(target.shape)}")
    target.copy_(torch.from_numpy(np.array(source, dtype=np.float32)))


@torch.no_grad()
def recalibrate_batch_norm(
    backbone: nn.Module, biases: dict[str, np.ndarray], images: torch.Tensor
) -> None:
    """Re-express each identity batch norm with the statistics of its input on `images`,
    leaving the eval-mode function unchanged (see the module docstring)."""
    modules = dict(backbone.named_modules())
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            z = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1).double()
            stats[name] = (z.mean(1), z.var(1, unbiased=False))

        return hook

    handles = [modules[name].register_forward_pre_hook(record(name)) for name in biases]
    try:
        backbone.eval()
        backbone(images)
    finally:
        for handle in handles:
            handle.remove()
    for name, bias in biases.items():
        bn = modules[name]
        mean, var = stats[name]
        var = var.clamp_min(bn.eps)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var - bn.eps)
        bn.weight.copy_(var.sqrt())
        bn.bias.copy_(mean + torch.tensor(bias, dtype=torch.float64))


@torch.no_grad()
def check_agreement(backbone: nn.Module, embedder: Embedder, images: torch.Tensor) -> float:
    """The lowest cosine between the rebuilt backbone and onnxruntime on the same faces."""
    # The same pixels for both, after the file's uint8 input round trip.
    pixels = (images * PIXEL_STD + PIXEL_MEAN).round().clamp(0, 255)
    faces = pixels.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    expected = embedder.embed(faces).vectors
    backbone.eval()
    ours = nn.functional.normalize(backbone((pixels - PIXEL_MEAN) / PIXEL_STD), dim=1).numpy()
    return float((ours * expected).sum(axis=1).min())


def load_exported(
    backbone: nn.Module,
    backbone_name: str,
    embedding_dim: int,
    embedder: Embedder,
    images: torch.Tensor,
) -> None:
    """Put the network of `embedder`'s file into `backbone` (a CPU `backbone_name` of
    `embedding_dim`), checked against it. `images` (N, 3, 112, 112, normalised training
    faces) set the batch-norm statistics."""
    contract, path = embedder.contract, embedder.path
    if (contract.backbone, contract.embedding_dim) != (backbone_name, embedding_dim):
        raise ValueError(
            f"{path} is {contract.backbone}-{contract.embedding_dim}, "
            f"the run asks for {backbone_name}-{embedding_dim}"
        )
    biases = load_exported_weights(backbone, onnx.load(str(path)))
    recalibrate_batch_norm(backbone, biases, images)
    agreement = check_agreement(backbone, embedder, images[:64])
    if agreement < MIN_AGREEMENT:
        raise ValueError(
            f"the rebuilt {backbone_name} agrees with {path} only to cosine {agreement:.6f}; "
            "this backbone's layout cannot be recovered from the file"
        )


def check_foreign(
    backbone: nn.Module, embedding_dim: int, embedder: Embedder, images: torch.Tensor
) -> None:
    """A foreign network runs the file's own weights; check it computes what the file does
    (and has the embedding size the head is built for) before training moves it."""
    contract, path = embedder.contract, embedder.path
    if contract.embedding_dim != embedding_dim:
        raise ValueError(
            f"{path} gives {contract.embedding_dim}-d embeddings; "
            f"set --embedding-dim {contract.embedding_dim}"
        )
    agreement = check_agreement(backbone, embedder, images[:64])
    if agreement < MIN_AGREEMENT:
        raise ValueError(f"the network of {path} runs in torch only to cosine {agreement:.6f}")


def class_means(
    embedder: Embedder, index: FaceIndex, per_identity: int, batch_size: int = 128
) -> torch.Tensor:
    """Unit-length mean embedding per class, from the exported file itself (onnxruntime is
    the faster CPU path, and the rebuilt backbone computes the same) over each identity's
    first `per_identity` faces, un-augmented."""
    chosen = np.concatenate(
        [np.flatnonzero(index.labels == c)[:per_identity] for c in range(index.num_classes)]
    )
    if len(np.unique(index.labels[chosen])) != index.num_classes:
        raise ValueError("every class needs at least one face to imprint its weight")
    sums = torch.zeros(index.num_classes, embedder.contract.embedding_dim, dtype=torch.float64)
    for start in tqdm(range(0, len(chosen), batch_size), desc="imprinting the head", unit="batch"):
        rows = chosen[start : start + batch_size]
        pixels = np.stack([load_rgb(index.root / index.paths[i], index.size) for i in rows])
        vectors = torch.from_numpy(embedder.embed(pixels).vectors).double()
        sums.index_add_(0, torch.from_numpy(index.labels[rows]), vectors)
    return nn.functional.normalize(sums, dim=1).float()
