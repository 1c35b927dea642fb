"""A pretrained contract network cut in two: the trunk, frozen, whose features are computed
once per face (and its mirror image) and cached on disk; and the stage after it, run by torch
so it trains, ending in a fresh embedding layer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.utils import Extractor
from torch import nn
from tqdm import tqdm

from export.wrap import ForeignConvention, unwrap
from training.data import crop_size, load_rgb
from training.embedder import resolve_aligned
from training.onnx_network import OnnxNetwork


# -- the split ------------------------------------------------------------------------------
def split_network(
    model: Path, trunk_output: str, stage_output: str
) -> tuple[onnx.ModelProto, onnx.ModelProto, ForeignConvention, str]:
    """The model's trunk (input to trunk_output), its stage (trunk_output to stage_output),
    its input convention and its graph's final output."""

    graph, convention = unwrap(onnx.load(model))
    initializers = {t.name for t in graph.graph.initializer}
    image = next(i.name for i in graph.graph.input if i.name not in initializers)
    names = {o for n in graph.graph.node for o in n.output}
    for wanted in (trunk_output, stage_output):
        if wanted not in names:
            raise ValueError(f"{model.name} has no tensor {wanted!r}")
    extractor = Extractor(graph)
    trunk = extractor.extract_model([image], [trunk_output])
    stage = extractor.extract_model([trunk_output], [stage_output])
    return trunk, stage, convention, graph.graph.output[0].name


def reference_stage(model: Path, trunk_output: str) -> onnx.ModelProto:
    """Trunk output to the network's own embedding, untouched: the pretrained reference."""

    graph, _ = unwrap(onnx.load(model))
    return Extractor(graph).extract_model([trunk_output], [graph.graph.output[0].name])


class StageNetwork(nn.Module):
    """The pretrained last stage, then a fresh embedding layer (linear, batch norm), as
    arcface_torch ends its backbones."""

    def __init__(self, stage: onnx.ModelProto, channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.stage = OnnxNetwork(stage)
        self.embedding = nn.Linear(channels, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.embedding(self.stage(x).flatten(1)))


# -- the feature cache ----------------------------------------------------------------------
def trunk_features(
    trunk: onnx.ModelProto,
    convention: ForeignConvention,
    root: Path,
    paths: list[str],
    cache: Path,
    mirror: bool = False,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """(features float16 (N, C, H, W) memory-mapped, found (N,) bool) for faces under root;
    computed once per trunk, tree, path list and orientation and kept in `cache`. A path
    without an aligned face (the detector missed it) gets zeros and found False."""
    key = hashlib.sha256(
        json.dumps(
            [hashlib.sha256(trunk.SerializeToString()).hexdigest(), str(root), paths, mirror]
        ).encode()
    ).hexdigest()[:16]
    features_path, found_path = cache / f"trunk-{key}.npy", cache / f"trunk-{key}-found.npy"
    if features_path.exists() and found_path.exists():
        return np.load(features_path, mmap_mode="r"), np.load(found_path)
    cache.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    session = ort.InferenceSession(
        trunk.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    files = [resolve_aligned(root, p) for p in paths]
    size = crop_size(next(f for f in files if f is not None))
    shape = session.run(None, {name: np.zeros((1, 3, size, size), np.float32)})[0].shape[1:]
    # Per process: two runs filling the same cache at once each write their own, and the
    # last rename wins with identical bytes.
    partial = features_path.with_suffix(f".{os.getpid()}.partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.float16, (len(paths), *shape))
    found = np.array([f is not None for f in files])
    what = f"trunk features{' (mirrored)' if mirror else ''}"
    for start in tqdm(range(0, len(paths), batch_size), desc=what, unit="batch"):
        chunk = [(i, files[i]) for i in range(start, min(start + batch_size, len(paths)))]
        chunk = [(i, f) for i, f in chunk if f is not None]
        if not chunk:
            continue
        images = [load_rgb(f, size) for _, f in chunk]
        if mirror:
            images = [im[:, ::-1] for im in images]
        batch = convention.preprocess(np.stack(images))
        out[[i for i, _ in chunk]] = session.run(None, {name: batch})[0].astype(np.float16)
    out.flush()
    del out
    np.save(found_path, found)
    os.replace(partial, features_path)
    return np.load(features_path, mmap_mode="r"), found
