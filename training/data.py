"""Aligned-face datasets: identity folders, identity splits, augmentation, P×K batches.

Every random choice is drawn from a generator seeded by (seed, epoch, sample index), so an
epoch's batches and augmentations are the same whether it runs straight through or resumes
from a checkpoint, and whichever worker process loads a sample.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from service.vision.alignment import ALIGNED_SIZE
from training.config import Augmentation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The ArcFace convention; the exported graph applies the same normalisation (see export/).
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5


@dataclass(frozen=True)
class FaceIndex:
    """Image paths and integer labels of an identity-folder tree."""

    root: Path
    paths: tuple[str, ...]  # relative to root
    labels: np.ndarray  # int64 (N,)
    identities: tuple[str, ...]  # label -> identity folder, relative to root
    # The side of the square crops: 112 for the ArcFace template, 128 for OMZ's (the
    # template `facemargin prepare --model` aligned to).
    size: int = ALIGNED_SIZE

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.identities)


def index_faces(root: Path, min_images: int = 1, max_identities: int | None = None) -> FaceIndex:
    """Every image under `root`, labelled by its parent folder (so `celeba/00001` and
    `fiw/F0001-1` from one prepared tree are distinct identities)."""
    by_identity: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        images = sorted(
            f for f in files if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
        )
        if images:
            identity = Path(folder).relative_to(root).as_posix()
            by_identity[identity] = [f"{identity}/{f}" for f in images]
    kept = sorted(i for i, files in by_identity.items() if len(files) >= min_images)
    if max_identities is not None:
        kept = kept[:max_identities]
    paths: list[str] = []
    labels: list[int] = []
    for label, identity in enumerate(kept):
        paths.extend(by_identity[identity])
        labels.extend([label] * len(by_identity[identity]))
    size = crop_size(root / paths[0]) if paths else ALIGNED_SIZE
    return FaceIndex(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(kept), size)


def crop_size(first: Path) -> int:
    """The crop side of a prepared tree, read off its first face (every face of a tree has
    the size of its template; `load_rgb` refuses any other)."""
    image = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read aligned face {first}")
    return int(image.shape[0])


def split_by_identity(index: FaceIndex, held_out: float, seed: int) -> tuple[FaceIndex, FaceIndex]:
    """Two disjoint sets of identities; labels are renumbered from 0 in each."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(index.num_classes)
    n_held = round(index.num_classes * held_out)
    held = set(order[:n_held].tolist())
    return _subset(index, [c for c in range(index.num_classes) if c not in held]), _subset(
        index, sorted(held)
    )


def _subset(index: FaceIndex, classes: Sequence[int]) -> FaceIndex:
    relabel = {old: new for new, old in enumerate(classes)}
    keep = [i for i, label in enumerate(index.labels) if int(label) in relabel]
    return FaceIndex(
        index.root,
        tuple(index.paths[i] for i in keep),
        np.asarray([relabel[int(index.labels[i])] for i in keep], dtype=np.int64),
        tuple(index.identities[c] for c in classes),
        index.size,
    )


def load_rgb(path: Path, size: int = ALIGNED_SIZE) -> np.ndarray:
    """An aligned face written by `facemargin prepare`, RGB, refused unless size x size."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read aligned face {path}")
    if image.shape[:2] != (size, size):
        raise ValueError(
            f"{path} is {image.shape[1]}x{image.shape[0]}, not an aligned {size}x{size} face"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB -> float32 CHW in [-1, 1]."""
    return torch.from_numpy(
        ((image.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1).copy()
    )


def augment(
    image: np.ndarray, rng: np.random.Generator, strength: Augmentation = "standard"
) -> np.ndarray:
    """Standard face augmentation, mild enough to keep the alignment meaningful: mirror,
    brightness/contrast/saturation jitter, and sometimes blur or a low-resolution round trip
    (what a distant or compressed face looks like after alignment). "strong" adds what a
    small data set needs against memorising its faces: the landmark error a detector really
    makes (a small random shift, scale and rotation of the aligned crop) and random erasing
    (a patch hidden, as hair, hands or glasses hide part of a face)."""
    out = image[:, ::-1] if rng.random() < 0.5 else image
    if strength == "strong" and rng.random() < 0.7:
        out = _jitter_alignment(out, rng)
    out = out.astype(np.float32)
    if rng.random() < 0.8:
        brightness = rng.uniform(-0.2, 0.2) * 255
        contrast = rng.uniform(0.8, 1.2)
        saturation = rng.uniform(0.8, 1.2)
        grey = out.mean(axis=2, keepdims=True)
        out = grey + (out - grey) * saturation
        out = (out - 127.5) * contrast + 127.5 + brightness
    out = np.clip(out, 0, 255).astype(np.uint8)
    roll = rng.random()
    if roll < 0.1:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.2))
    elif roll < 0.2:
        side = int(rng.integers(40, 96) * image.shape[0] / ALIGNED_SIZE)
        small = cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA)
        size = image.shape[0]
        out = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    if strength == "strong" and rng.random() < 0.4:
        out = _erase_patch(out, rng)
    return np.ascontiguousarray(out)


def _jitter_alignment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """About the error of MTCNN's five points on a real photo: up to 4 px of shift, 5% of
    scale and 6 degrees of roll on the 112-pixel crop (the shift in proportion on others)."""
    size = image.shape[0]
    centre = (size / 2, size / 2)
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-6, 6), rng.uniform(0.95, 1.05))
    matrix[:, 2] += rng.uniform(-4, 4, size=2) * size / ALIGNED_SIZE
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _erase_patch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random erasing (Zhong et al. 2020): 2-20% of the crop, aspect 0.3-3.3, filled with
    noise so the network cannot learn the fill."""
    size = image.shape[0]
    area = rng.uniform(0.02, 0.2) * size**2
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    h = min(round(np.sqrt(area * aspect)), size)
    w = min(round(np.sqrt(area / aspect)), size)
    top = int(rng.integers(0, size - h + 1))
    left = int(rng.integers(0, size - w + 1))
    out = image.copy()
    out[top : top + h, left : left + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return out


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class FaceDataset(Dataset):
    """Items are (image tensor, label). `augmentation` names the augmentation (None: the
    plain faces); set `epoch` before each epoch so augmentations differ between epochs and
    repeat on resume."""

    def __init__(
        self,
        index: FaceIndex,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.index = index
        self.seed = seed
        self.augmentation = augmentation
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(self.index.root / self.index.paths[i], self.index.size)
        if self.augmentation is not None:
            image = augment(image, sample_rng(self.seed, self.epoch, i), self.augmentation)
        return to_tensor(image), int(self.index.labels[i])


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of a plain shuffled pass; the ragged tail is dropped so batch
    statistics stay comparable."""
    order = np.random.default_rng([seed, epoch, 1]).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n - batch_size + 1, batch_size)]


def pk_batches(labels: np.ndarray, p: int, k: int, seed: int, epoch: int) -> list[list[int]]:
    """Identity-balanced batches of P identities × K images, as metric losses need (every
    anchor has positives and negatives in its batch). Identities with fewer than K images
    are sampled with replacement; an epoch sees about as many images as the dataset holds."""
    rng = np.random.default_rng([seed, epoch, 2])
    by_class: dict[int, np.ndarray] = {
        int(c): np.flatnonzero(labels == c) for c in np.unique(labels)
    }
    classes = np.array(sorted(by_class))
    if len(classes) < p:
        raise ValueError(f"P×K batches need at least P={p} identities, found {len(classes)}")
    batches: list[list[int]] = []
    for _ in range(max(len(labels) // (p * k), 1)):
        batch: list[int] = []
        for c in rng.choice(classes, size=p, replace=False):
            members = by_class[int(c)]
            batch.extend(rng.choice(members, size=k, replace=len(members) < k).tolist())
        batches.append(batch)
    return batches


class BatchList(torch.utils.data.Sampler[list[int]]):
    """A fixed list of batches, for DataLoader(batch_sampler=...); resuming mid-epoch hands in
    the list with the finished batches removed."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
