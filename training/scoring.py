"""Score a trained checkpoint: pairs protocols (CFP, plain pairs lists) and open-set
identification, with a JSON report and plots. The metrics themselves live in
`training.evaluation`; this module runs the network and feeds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.embedder import embed_dataset, load_backbone
from training.evaluation import roc_curve, verification_report
from training.open_set import open_set_report, split_open_set
from training.plots import plot_roc, plot_score_histograms
from training.protocols import PairsProtocol

FAR_TARGETS = (1e-2, 1e-3, 1e-4)


@dataclass(frozen=True)
class ProtocolRun:
    protocol: PairsProtocol
    image_root: Path  # aligned faces, same layout as the protocol's paths


@dataclass(frozen=True)
class OpenSetRun:
    name: str
    image_root: Path
    paths: list[str]
    identities: list[str]


def pair_scores(embeddings: dict[str, np.ndarray], protocol: PairsProtocol) -> np.ndarray:
    """Cosine similarity per pair; NaN where either face is missing (counted as an error)."""
    left = np.stack([embeddings[p] for p in protocol.left])
    right = np.stack([embeddings[p] for p in protocol.right])
    return (left * right).sum(axis=1)


def images_by_root(
    protocols: list[ProtocolRun], open_sets: list[OpenSetRun]
) -> dict[Path, list[str]]:
    """Every image the runs need, by image root, each once: CFP's FF, FP and open-set runs
    share most of their photos."""
    wanted: dict[Path, set[str]] = {}
    for run in protocols:
        wanted.setdefault(run.image_root, set()).update(run.protocol.images)
    for run in open_sets:
        wanted.setdefault(run.image_root, set()).update(run.paths)
    return {root: sorted(paths) for root, paths in wanted.items()}


def _embed_once(
    backbone: torch.nn.Module,
    protocols: list[ProtocolRun],
    open_sets: list[OpenSetRun],
    device: torch.device,
    flip: bool,
) -> dict[Path, dict[str, np.ndarray]]:
    embedded: dict[Path, dict[str, np.ndarray]] = {}
    for root, paths in images_by_root(protocols, open_sets).items():
        rows = embed_dataset(backbone, root, paths, device, flip=flip)
        embedded[root] = dict(zip(paths, rows, strict=True))
    return embedded


def cfp_frontal_open_set(cfp_root: Path, aligned_root: Path) -> OpenSetRun:
    """CFP's 500 people × 10 frontal photos as an open-set identification protocol."""
    images = sorted((cfp_root / "Data" / "Images").glob("*/frontal/*.jpg"))
    paths = [p.relative_to(cfp_root).as_posix() for p in images]
    return OpenSetRun("cfp-frontal-open-set", aligned_root, paths, [p.split("/")[2] for p in paths])


def evaluate_checkpoint(
    checkpoint: Path,
    protocols: list[ProtocolRun],
    open_sets: list[OpenSetRun],
    out: Path,
    flip: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    backbone, config = load_backbone(checkpoint, device)
    vectors = _embed_once(backbone, protocols, open_sets, torch.device(device), flip)
    report = {
        "checkpoint": str(checkpoint),
        "backbone": config.backbone,
        "head": config.head,
        "loss": config.loss,
        "flip": flip,
    }
    return report | score_embeddings(
        vectors, protocols, open_sets, out, title=f"{checkpoint.parent.name}: ROC"
    )


def score_embeddings(
    vectors: dict[Path, dict[str, np.ndarray]],
    protocols: list[ProtocolRun],
    open_sets: list[OpenSetRun],
    out: Path,
    title: str,
) -> dict[str, Any]:
    """The verification and open-set report of embeddings by image root and path, with the
    raw pair scores (scores-<protocol>.npz) and plots written into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"verification": {}, "open_set": {}}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for run in protocols:
        scores = pair_scores(vectors[run.image_root], run.protocol)
        result = verification_report(scores, run.protocol.same, run.protocol.fold, FAR_TARGETS)
        # Through JSON: infinite thresholds become strings there, not invalid JSON.
        report["verification"][run.protocol.name] = json.loads(result.model_dump_json())
        # The raw pair scores travel with the report so runs can be compared on one ROC later.
        np.savez_compressed(
            out / f"scores-{run.protocol.name}.npz",
            scores=scores,
            same=run.protocol.same,
            fold=run.protocol.fold,
        )
        far, tar, _ = roc_curve(scores, run.protocol.same)
        curves[run.protocol.name] = (far, tar)
        plot_score_histograms(
            scores,
            run.protocol.same,
            out / f"scores-{run.protocol.name}.png",
            title=f"{run.protocol.name}: genuine vs impostor cosine",
        )
    if curves:
        plot_roc(curves, out / "roc.png", title=title)
    for run in open_sets:
        embedded = np.stack([vectors[run.image_root][p] for p in run.paths])
        gallery, probes = split_open_set(run.identities, run.paths, known_fraction=0.5, seed=0)
        ids = np.asarray(run.identities)
        result = open_set_report(embedded[gallery], ids[gallery], embedded[probes], ids[probes])
        report["open_set"][run.name] = json.loads(result.model_dump_json())
    return report
