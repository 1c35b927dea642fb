"""Similarity alignment: exact on synthetic transforms, and on real photos re-detection puts
the landmarks back on the template."""

from __future__ import annotations

import numpy as np
import pytest

from service.vision.alignment import (
    ALIGNED_SIZE,
    ARCFACE_112,
    ARCFACE_TEMPLATE,
    OMZ_128,
    align_face,
    alignment_matrix,
    similarity_transform,
    template_named,
    transform_points,
)
from tests.conftest import load_rgb


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


@pytest.mark.parametrize(
    ("scale", "angle", "tx", "ty"),
    [(1, 0, 0, 0), (2.5, 0.3, 40, -7), (0.4, -1.2, 300, 120), (1.7, np.pi * 0.9, 5, 5)],
)
def test_recovers_a_known_similarity_exactly(scale, angle, tx, ty):
    truth = similarity(scale, angle, tx, ty)
    moved = transform_points(ARCFACE_TEMPLATE, truth)
    estimated = similarity_transform(ARCFACE_TEMPLATE, moved)
    np.testing.assert_allclose(estimated, truth, atol=1e-9)


def test_least_squares_under_noise_beats_any_perturbation():
    rng = np.random.default_rng(1)
    source = ARCFACE_TEMPLATE + rng.normal(0, 2, ARCFACE_TEMPLATE.shape)
    best = similarity_transform(source, ARCFACE_TEMPLATE)
    residual = np.sum((transform_points(source, best) - ARCFACE_TEMPLATE) ** 2)
    for _ in range(50):
        worse = best + rng.normal(0, 1e-3, best.shape) * [[1, 1, 100], [1, 1, 100]]
        # Only similarity matrices count: project the perturbation back onto that family.
        a, b = (worse[0, 0] + worse[1, 1]) / 2, (worse[1, 0] - worse[0, 1]) / 2
        worse[:, :2] = [[a, -b], [b, a]]
        assert np.sum((transform_points(source, worse) - ARCFACE_TEMPLATE) ** 2) >= residual


def test_mirrored_landmarks_give_a_rotation_not_a_reflection():
    mirrored = ARCFACE_TEMPLATE * [-1, 1]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_template_landmarks_align_to_identity():
    np.testing.assert_allclose(
        alignment_matrix(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-9
    )


def test_aligned_pixels_follow_the_transform():
    """A bright dot at a landmark lands on that landmark's template position."""
    image = np.zeros((400, 500, 3), dtype=np.uint8)
    truth = similarity(3.0, 0.4, 120, 60)
    landmarks = transform_points(ARCFACE_TEMPLATE, truth)
    x, y = np.round(landmarks[2]).astype(int)
    image[y - 2 : y + 3, x - 2 : x + 3] = 255
    aligned = align_face(image, landmarks)
    assert aligned.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3) and aligned.dtype == np.uint8
    peak = np.unravel_index(np.argmax(aligned[..., 0]), aligned.shape[:2])
    assert (
        abs(peak[1] - ARCFACE_TEMPLATE[2, 0]) <= 1.5
        and abs(peak[0] - ARCFACE_TEMPLATE[2, 1]) <= 1.5
    )


def test_real_faces_land_on_the_template(mtcnn, photos):
    """Detect, align, detect again: the second landmarks sit near the template."""
    errors = []
    for path in photos[::3]:
        faces = mtcnn.detect(load_rgb(path))
        if not faces:
            continue
        aligned = align_face(load_rgb(path), max(faces, key=lambda f: f.area).landmarks)
        again = mtcnn.detect(aligned)
        if again:
            errors.append(
                np.abs(max(again, key=lambda f: f.area).landmarks - ARCFACE_TEMPLATE).mean()
            )
    assert len(errors) >= 8
    print(f"mean landmark error after alignment: {np.mean(errors):.2f} px")
    assert np.median(errors) < 3.0


@pytest.mark.parametrize("template", [ARCFACE_112, OMZ_128], ids=lambda t: t.name)
def test_each_template_puts_the_landmarks_where_its_model_expects_them(template):
    """A face at any pose and scale lands on the template's own points in a crop of its own
    size (for OMZ: the model card's normalised points x 128)."""
    rng = np.random.default_rng(3)
    truth = np.array([[1.7, -0.4, 210.0], [0.4, 1.7, 160.0]])
    landmarks = transform_points(template.array, truth)
    image = rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)
    matrix = alignment_matrix(landmarks, template)
    np.testing.assert_allclose(transform_points(landmarks, matrix), template.array, atol=1e-6)
    assert align_face(image, landmarks, template).shape == (template.size, template.size, 3)


def test_the_omz_template_is_the_model_cards():
    assert OMZ_128.size == 128
    np.testing.assert_allclose(OMZ_128.array[0], [0.31556875 * 128, 0.4615741071428571 * 128])
    assert template_named("omz-128-5pt") is OMZ_128
    with pytest.raises(ValueError, match="unknown alignment template"):
        template_named("nope")
