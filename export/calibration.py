"""Cosine thresholds at named false-accept rates, measured with the exported file itself
through the service's own `Embedder`, on a stated protocol.

Pairs where the detector missed a face are left out of the thresholds and counted apart: no
threshold can fix a missed face, and counting them as impostors accepted (as the 10-fold
protocol does, rightly, for accuracy) would make every strict FAR unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.vision.alignment import Template
from service.vision.contract import (
    CURVE_LARGEST_FAR,
    CURVE_POINTS_PER_DECADE,
    FAR_TARGETS,
    MIN_FALSE_ACCEPTS,
    Calibration,
    FarPoint,
    OperatingPoint,
    Validation,
)
from service.vision.embedder import Embedder
from service.vision.preprocess import DetectorConfig
from training.data import load_rgb
from training.embedder import resolve_aligned
from training.evaluation import eer, threshold_at_far, verification_report
from training.protocols import PairsProtocol


@dataclass(frozen=True)
class FaceSet:
    """Images of known identity under one aligned root (`facemargin prepare` output)."""

    name: str
    description: str
    root: Path
    paths: list[str]
    identities: list[str]


def cfp_frontal(cfp_root: Path, aligned_root: Path) -> FaceSet:
    """CFP's 500 people × 10 frontal photos; every pair among them is used."""
    images = sorted((cfp_root / "Data" / "Images").glob("*/frontal/*.jpg"))
    if not images:
        raise FileNotFoundError(f"no CFP frontal images under {cfp_root}/Data/Images")
    paths = [p.relative_to(cfp_root).as_posix() for p in images]
    return FaceSet(
        name="cfp-frontal-all-pairs",
        description="every pair among CFP's frontal photos (500 people x 10), "
        "aligned by facemargin's own detection and alignment",
        root=aligned_root,
        paths=paths,
        identities=[p.split("/")[2] for p in paths],
    )


def embed_paths(
    embedder: Embedder, root: Path, paths: list[str], batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, d) and norms (N,) for aligned files; NaN where prepare found no face."""
    out = np.full((len(paths), embedder.contract.embedding_dim), np.nan, dtype=np.float32)
    norms = np.full(len(paths), np.nan, dtype=np.float32)
    found = [(i, resolve_aligned(root, p)) for i, p in enumerate(paths)]
    present = [(i, path) for i, path in found if path is not None]
    with tqdm(
        total=len(present), unit="face", desc="embed", disable=not progress, dynamic_ncols=True
    ) as bar:
        for start in range(0, len(present), batch_size):
            chunk = present[start : start + batch_size]
            faces = np.stack([load_rgb(path, embedder.template.size) for _, path in chunk])
            result = embedder.embed(faces)
            rows = [i for i, _ in chunk]
            out[rows] = result.vectors
            norms[rows] = result.norms
            bar.update(len(chunk))
    return out, norms


def all_pair_scores(
    embeddings: np.ndarray, identities: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """(genuine scores, impostor scores, images without a face) over every unordered pair of
    images that both have a face."""
    present = ~np.isnan(embeddings).any(axis=1)
    vectors = embeddings[present].astype(np.float32)
    labels = np.asarray(identities)[present]
    similarity = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), k=1)
    scores = similarity[upper]
    same = labels[upper[0]] == labels[upper[1]]
    return scores[same], scores[~same], int((~present).sum())


def calibration_from_scores(
    genuine: np.ndarray,
    impostor: np.ndarray,
    protocol: str,
    description: str,
    n_images: int,
    n_without_face: int,
    far_targets: tuple[float, ...] = FAR_TARGETS,
) -> Calibration:
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError(f"{protocol}: calibration needs genuine and impostor pairs")
    points, unsupported = [], []
    for far in far_targets:
        if impostor.size * far < MIN_FALSE_ACCEPTS:
            unsupported.append(far)
            continue
        threshold = threshold_at_far(impostor, far)
        points.append(
            OperatingPoint(
                far=far,
                threshold=threshold,
                far_achieved=float(np.mean(impostor >= threshold)),
                tar=float(np.mean(genuine >= threshold)),
            )
        )
    scores = np.concatenate([genuine, impostor])
    same = np.concatenate([np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
    rate, rate_threshold = eer(scores, same)
    curve = far_curve(impostor)
    return Calibration(
        protocol=protocol,
        description=description,
        n_images=n_images,
        n_images_without_face=n_without_face,
        n_genuine=int(genuine.size),
        n_impostor=int(impostor.size),
        operating_points=points,
        unsupported_fars=unsupported,
        far_curve=curve,
        eer=rate,
        eer_threshold=rate_threshold,
    )


def far_curve(impostor: np.ndarray) -> list[FarPoint]:
    """Thresholds at CURVE_POINTS_PER_DECADE FARs per decade from CURVE_LARGEST_FAR down to
    the smallest FAR with MIN_FALSE_ACCEPTS impostor pairs behind it."""
    points, k = [], 0
    while True:
        far = CURVE_LARGEST_FAR * 10 ** (-k / CURVE_POINTS_PER_DECADE)
        if impostor.size * far < MIN_FALSE_ACCEPTS:
            return points
        points.append(FarPoint(far=far, threshold=threshold_at_far(impostor, far)))
        k += 1


def calibrate_face_set(vectors: dict[str, np.ndarray], faces: FaceSet) -> Calibration:
    embeddings = np.stack([vectors[p] for p in faces.paths])
    genuine, impostor, missing = all_pair_scores(embeddings, faces.identities)
    return calibration_from_scores(
        genuine, impostor, faces.name, faces.description, len(faces.paths), missing
    )


def pair_scores(vectors: dict[str, np.ndarray], protocol: PairsProtocol) -> np.ndarray:
    """Cosine per pair, NaN where either face is missing."""
    left = np.stack([vectors[p] for p in protocol.left])
    right = np.stack([vectors[p] for p in protocol.right])
    return (left * right).sum(axis=1)


def calibrate_pairs(vectors: dict[str, np.ndarray], protocol: PairsProtocol) -> Calibration:
    scores = pair_scores(vectors, protocol)
    found = ~np.isnan(scores)
    same = protocol.same
    missing = sum(int(np.isnan(vectors[p]).any()) for p in protocol.images)
    return calibration_from_scores(
        scores[found & same],
        scores[found & ~same],
        protocol.name,
        f"pairs list {protocol.name} ({len(protocol)} pairs)",
        len(protocol.images),
        missing,
    )


def validate(vectors: dict[str, np.ndarray], protocol: PairsProtocol) -> Validation:
    """The protocol's own 10-fold accuracy, a missed face counted as an error."""
    report = verification_report(pair_scores(vectors, protocol), protocol.same, protocol.fold)
    point = next(p for p in report.tar_at_far if p.far == 1e-3)
    return Validation(
        protocol=protocol.name,
        n_pairs=report.n_pairs,
        n_missing=report.n_missing,
        accuracy=report.accuracy,
        accuracy_std=report.accuracy_std,
        tar_at_far_1e3=point.tar if point.supported else None,
    )


@dataclass(frozen=True)
class ValidationData:
    """Where thresholds are measured: CFP (raw root for its protocol files, aligned root for
    the faces), or a pairs list whose paths are relative to an aligned root."""

    aligned_root: Path
    cfp_root: Path | None = None
    pairs: PairsProtocol | None = None

    def __post_init__(self) -> None:
        if (self.cfp_root is None) == (self.pairs is None):
            raise ValueError("give either a CFP root or a pairs list")

    def faces_for_parity(self) -> Path:
        if self.cfp_root is not None:
            return self.aligned_root / "Data" / "Images"
        return self.aligned_root


def prepared_cfp(
    cfp_root: Path, cache: Path, workers: int, template: Template, detector: DetectorConfig
) -> Path:
    """CFP aligned by `facemargin prepare` onto `template` with the service's `detector` into
    `cache` (resumable: a finished cache costs a directory scan), so thresholds are measured
    on exactly what the service will see."""
    from training.prepare import PrepareOptions, prepare

    one_thread = detector.model_copy(update={"threads": 1})  # prepare runs one per process
    prepare(
        PrepareOptions(
            source=cfp_root, target=cache, workers=workers, template=template, detector=one_thread
        )
    )
    return cache


@dataclass(frozen=True)
class Measurement:
    calibration: Calibration
    validations: list[Validation]
    vectors: dict[str, np.ndarray]  # every embedded image, by protocol path


def measure(embedder: Embedder, data: ValidationData, progress: bool = True) -> Measurement:
    """Thresholds and the published protocols' accuracy for this file, each image embedded
    once."""
    if data.cfp_root is not None:
        from training.protocols import read_cfp

        faces = cfp_frontal(data.cfp_root, data.aligned_root)
        protocols = [read_cfp(data.cfp_root, split) for split in ("FF", "FP")]
    else:
        assert data.pairs is not None
        faces, protocols = None, [data.pairs]
    wanted = set(faces.paths if faces else [])
    for protocol in protocols:
        wanted.update(protocol.images)
    ordered = sorted(wanted)
    rows, norms = embed_paths(embedder, data.aligned_root, ordered, progress=progress)
    vectors = dict(zip(ordered, rows, strict=True))
    if faces is not None:
        calibration = calibrate_face_set(vectors, faces)
    else:
        calibration = calibrate_pairs(vectors, protocols[0])
    found = norms[~np.isnan(norms)]
    calibration = calibration.model_copy(
        update={"norm_percentiles": {f"p{q}": float(np.percentile(found, q)) for q in (1, 5, 50)}}
    )
    return Measurement(calibration, [validate(vectors, p) for p in protocols], vectors)
