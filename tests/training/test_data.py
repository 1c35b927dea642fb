"""Datasets, identity splits, augmentation and batch plans."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from training.config import Augmentation, TrainConfig
from training.data import (
    FaceDataset,
    augment,
    index_faces,
    pk_batches,
    sample_rng,
    shuffled_batches,
    split_by_identity,
    to_tensor,
)


def test_index_labels_each_identity_folder(small_faces):
    index = index_faces(small_faces)
    assert index.num_classes == 40
    for path, label in zip(index.paths, index.labels, strict=True):
        assert path.rsplit("/", 1)[0] == index.identities[label]
    assert index_faces(small_faces, max_identities=7).num_classes == 7
    few = index_faces(small_faces, min_images=6)
    assert all(np.bincount(few.labels) >= 6)


def test_split_is_by_identity_and_deterministic(small_faces):
    index = index_faces(small_faces)
    train, held = split_by_identity(index, 0.25, seed=3)
    assert held.num_classes == 10 and train.num_classes == 30
    assert not set(train.identities) & set(held.identities)
    assert len(train) + len(held) == len(index)
    assert split_by_identity(index, 0.25, seed=3)[1].identities == held.identities
    assert split_by_identity(index, 0.25, seed=4)[1].identities != held.identities
    assert set(held.labels.tolist()) == set(range(10))


def test_dataset_items_are_normalised_tensors(small_faces):
    dataset = FaceDataset(index_faces(small_faces))
    image, label = dataset[0]
    assert image.shape == (3, 112, 112) and image.dtype == torch.float32
    assert -1.0 <= image.min() < 0 < image.max() <= 1.0
    assert label == 0


def test_to_tensor_is_the_arcface_normalisation():
    image = np.array([[[0, 127, 255]]], np.uint8)
    np.testing.assert_allclose(
        to_tensor(image)[:, 0, 0].numpy(), [-1.0, -0.5 / 127.5, 1.0], atol=1e-6
    )


@pytest.mark.parametrize("strength", get_args(Augmentation))
def test_augmentation_is_reproducible_and_varied(small_faces, strength):
    index = index_faces(small_faces)
    dataset = FaceDataset(index, strength, seed=1)
    first = dataset[3][0]
    assert torch.equal(first, dataset[3][0])
    dataset.epoch = 1
    assert not torch.equal(first, dataset[3][0])
    plain = FaceDataset(index)[3][0]
    assert not torch.equal(first, plain)


@pytest.mark.parametrize("strength", get_args(Augmentation))
def test_augmentation_keeps_the_face_in_place(strength):
    # A bright bar across the eyes stays at eye height after any augmentation.
    image = np.full((112, 112, 3), 60, np.uint8)
    image[48:56] = 230
    for k in range(40):
        out = augment(image, sample_rng(0, 0, k), strength).astype(float).mean(axis=(1, 2))
        assert out[48:56].mean() > out[:40].mean() + 60


def _rows_of_bar(image: np.ndarray) -> set[int]:
    return set(np.flatnonzero(image.mean(axis=(1, 2)) > 145).tolist())


def test_strong_augmentation_moves_the_alignment_a_little():
    image = np.full((112, 112, 3), 60, np.uint8)
    image[48:56] = 230
    standard = [_rows_of_bar(augment(image, sample_rng(0, 0, k))) for k in range(40)]
    strong = [_rows_of_bar(augment(image, sample_rng(0, 0, k), "strong")) for k in range(40)]
    # Colour jitter can thin the bar but never moves it; the strong jitter does, by pixels.
    assert all(rows <= set(range(46, 58)) for rows in standard)
    moved = [rows for rows in strong if rows and not rows <= set(range(47, 57))]
    assert len(moved) >= 5
    assert all(rows <= set(range(40, 64)) for rows in strong)


def test_strong_augmentation_erases_a_patch_with_noise():
    flat = np.full((112, 112, 3), 128, np.uint8)

    def noisy_pixels(out: np.ndarray) -> int:
        return int((np.abs(out.astype(int) - np.median(out)).max(axis=2) > 40).sum())

    standard = [noisy_pixels(augment(flat, sample_rng(3, 0, k))) for k in range(60)]
    strong = [noisy_pixels(augment(flat, sample_rng(3, 0, k), "strong")) for k in range(60)]
    assert max(standard) == 0
    erased = [n for n in strong if n > 0]
    # About 40% of faces get a patch of 2-20% of the crop (most of its noise pixels differ).
    assert 12 <= len(erased) <= 36
    assert all(n < 0.2 * 112 * 112 for n in erased)


def test_the_augmentation_is_a_validated_setting(tmp_path):
    assert TrainConfig(data=tmp_path, out=tmp_path).augmentation == "standard"
    with pytest.raises(ValidationError):
        TrainConfig(data=tmp_path, out=tmp_path, augmentation="extreme")


def test_shuffled_batches_cover_each_image_once(small_faces):
    batches = shuffled_batches(103, 10, seed=0, epoch=2)
    flat = [i for b in batches for i in b]
    assert len(batches) == 10 and len(set(flat)) == 100 and all(len(b) == 10 for b in batches)
    assert shuffled_batches(103, 10, 0, 2) == batches != shuffled_batches(103, 10, 0, 3)


def test_pk_batches_hold_p_identities_of_k_images():
    labels = np.repeat(np.arange(12), [2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 3])
    batches = pk_batches(labels, p=4, k=3, seed=0, epoch=0)
    assert len(batches) == len(labels) // 12
    for batch in batches:
        counts = np.bincount(labels[batch], minlength=12)
        assert sorted(counts[counts > 0].tolist()) == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="at least P"):
        pk_batches(labels, p=13, k=2, seed=0, epoch=0)


def test_a_tree_aligned_to_another_template_trains_at_its_own_size(tmp_path):
    """Faces prepared for the 128 px OMZ template stay 128 px through every augmentation,
    and the index knows its crop size."""
    from tests.conftest import prepare_subset

    root = prepare_subset(tmp_path, 3, 3, offset=300, template_name="omz-128-5pt")
    index = index_faces(root)
    assert index.size == 128
    assert split_by_identity(index, 0.34, 0)[0].size == 128
    dataset = FaceDataset(index, "strong", seed=1)
    for epoch in range(3):
        dataset.epoch = epoch
        for i in range(len(dataset)):
            image, _ = dataset[i]
            assert image.shape == (3, 128, 128)
