"""Large photos: JPEGs decoded at reduced scale (upright, sizes and coordinates reported on the
photo as sent) and big faces aligned without aliasing, identical to before for small ones."""

from __future__ import annotations

import functools
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from service.vision import faces as faces_module
from service.vision.alignment import (
    ARCFACE_112,
    ARCFACE_TEMPLATE,
    AREA_BELOW,
    OMZ_128,
    _area_factor,
    align_face,
    alignment_matrix,
)
from service.vision.detection import FacePolicy
from service.vision.faces import PhotoLimits, read_faces
from service.vision.imaging import WORKING_SIDE, decode_image, draft_factor
from tests.conftest import load_rgb

# Stored pixels for each EXIF orientation k, from the upright picture: the inverse of what the
# decoder applies.
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def jpeg(pixels: np.ndarray, orientation: int = 1, quality: int = 92) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def fill(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo scaled up to cover width x height, centre-cropped (a face filling the frame)."""
    side = max(width, height)
    big = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (side - height) // 2, (side - width) // 2
    return np.ascontiguousarray(big[y0 : y0 + height, x0 : x0 + width])


def area(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    return cv2.resize(pixels, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return load_rgb(photos[-1])  # a CFP frontal photo (a 112 x 112 face crop here)


# --------------------------------------------------------------------------- reduced decoding


@pytest.mark.parametrize(
    ("size", "max_side", "factor"),
    [
        ((4000, 3000), 1920, 2),
        ((4032, 3024), 1920, 2),
        ((8064, 6048), 1920, 4),
        ((3837, 2000), 1920, 1),
        ((3839, 2000), 1920, 2),
        ((16000, 100), 1920, 8),
        ((4000, 3000), None, 1),
    ],
)
def test_draft_factor_is_the_largest_keeping_the_working_side(size, max_side, factor):
    assert draft_factor(*size, max_side) == factor


def test_a_12_mp_jpeg_decodes_at_half_size(photo):
    upright = fill(photo, 4000, 3000)
    out = decode_image(jpeg(upright))
    assert WORKING_SIDE == 1920
    assert out.pixels.shape == (1500, 2000, 3) and out.scale == 0.5
    assert out.size == (4000, 3000) and out.format == "JPEG" and out.orientation == 1
    assert out.pixels.flags.c_contiguous and out.pixels.flags.writeable
    assert np.abs(out.pixels.astype(int) - area(upright, 2)).mean() < 2.5
    full = decode_image(jpeg(upright), max_side=None)
    assert full.pixels.shape == (3000, 4000, 3) and full.scale == 1.0 and full.size == (4000, 3000)


@pytest.mark.parametrize("k", range(1, 9))
def test_reduced_jpeg_is_upright_for_every_exif_orientation(photo, k):
    upright = fill(photo, 960, 640)
    out = decode_image(jpeg(STORED[k](upright), orientation=k), max_side=240)
    assert out.orientation == k and out.scale == 0.25
    assert out.pixels.shape == (160, 240, 3)
    assert out.size == (960, 640)  # upright, as sent, whichever way it was stored
    assert np.abs(out.pixels.astype(int) - area(upright, 4)).mean() < 4, k


def test_small_jpegs_and_other_formats_decode_at_full_size(photo):
    small = decode_image(jpeg(photo))
    h, w = photo.shape[:2]
    assert small.pixels.shape == (h, w, 3) and small.scale == 1.0 and small.size == (w, h)
    buf = io.BytesIO()
    Image.fromarray(fill(photo, 960, 640)).save(buf, "PNG")
    png = decode_image(buf.getvalue(), max_side=240)
    assert png.pixels.shape == (640, 960, 3) and png.scale == 1.0


# --------------------------------------------------------------------------- coordinates


def test_faces_are_reported_on_the_photo_as_sent(photo, mtcnn, monkeypatch):
    upright = fill(photo, 1000, 1000)
    data = jpeg(upright)
    found = {}
    for name, side in (("full", None), ("reduced", 250)):
        monkeypatch.setattr(
            faces_module, "decode_image", functools.partial(decode_image, max_side=side)
        )
        found[name] = read_faces(
            data, mtcnn, ARCFACE_112, FacePolicy.largest, PhotoLimits(10**8, 10**8, 200)
        )
    full, reduced = found["full"], found["reduced"]
    assert reduced.image.scale == 0.25 and reduced.image.pixels.shape == (250, 250, 3)
    assert reduced.image.size == full.image.size == (1000, 1000)
    a, b = full.faces[0].face, reduced.faces[0].face
    # Same face, same place on the 1000 px photo: within a few original pixels (one reduced
    # pixel is four), and min_face_px (200) is measured there too, not on the 250 px decode.
    assert np.abs(a.box - b.box).max() < 16
    assert np.abs(a.landmarks - b.landmarks).max() < 12
    assert b.width > 200
    assert np.abs(full.faces[0].pixels.astype(int) - reduced.faces[0].pixels).mean() < 8


# --------------------------------------------------------------------------- alignment


def upscaled(photo: np.ndarray, landmarks: np.ndarray, side: int = 2000):
    """The photo resized to side x side, and its landmarks carried along (pixel centres)."""
    big = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    scale = np.array([side / photo.shape[1], side / photo.shape[0]])
    return big, (landmarks.astype(np.float64) + 0.5) * scale - 0.5


def scaled_landmarks(scale: float, angle: float = 0.2, at=(400.0, 300.0)) -> np.ndarray:
    """Landmarks of a face that the aligner must shrink by `scale`."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]]) / scale
    return (ARCFACE_TEMPLATE - 56) @ rot.T + at


@pytest.mark.parametrize("scale", [AREA_BELOW, 0.51, 0.7, 1.0, 2.0])
@pytest.mark.parametrize("template", [ARCFACE_112, OMZ_128])
def test_at_scale_from_one_half_up_the_warp_is_the_plain_one(photo, scale, template):
    image = fill(photo, 800, 600)
    landmarks = scaled_landmarks(scale)
    matrix = alignment_matrix(landmarks, template)
    assert _area_factor(matrix) == 1
    plain = cv2.warpAffine(
        image, matrix, (template.size,) * 2, flags=cv2.INTER_LINEAR, borderValue=0.0
    )
    np.testing.assert_array_equal(align_face(image, landmarks, template), plain)


@pytest.mark.parametrize(("scale", "factor"), [(0.49, 2), (0.3, 3), (0.12, 8), (0.05, 20)])
def test_below_one_half_the_image_is_shrunk_to_a_remaining_scale_in_half_to_one(scale, factor):
    matrix = alignment_matrix(scaled_landmarks(scale))
    assert _area_factor(matrix) == factor
    assert 0.5 <= scale * factor <= 1.0


@pytest.mark.parametrize("template", [ARCFACE_112, OMZ_128])
def test_a_1000_px_face_aligns_like_its_downscaled_copy(photo, mtcnn, template):
    """A face photo scaled up to 2000 px (the face ~1000 px across): aligning the big image
    gives the crop one gets from an area-downscaled copy, where plain bilinear sampling
    aliases."""
    found = mtcnn.detect(photo)[0]
    big, landmarks = upscaled(photo, found.landmarks)
    assert found.width * 2000 / photo.shape[1] > 700
    assert _area_factor(alignment_matrix(landmarks, template)) >= 4  # the new path

    reference = align_face(photo, found.landmarks, template)  # the face before upscaling
    new = align_face(big, landmarks, template)
    plain = cv2.warpAffine(
        big,
        alignment_matrix(landmarks, template),
        (template.size,) * 2,
        flags=cv2.INTER_LINEAR,
        borderValue=0.0,
    )
    # Aligning an INTER_AREA-downscaled copy of the whole image: the new path only does that
    # locally (and at the same integer factor), so it matches to rounding.
    factor = _area_factor(alignment_matrix(landmarks, template))
    whole = big.shape[0] // factor * factor  # whole blocks, as the aligner averages
    copy = area(big[:whole, :whole], factor)
    copy_landmarks = (landmarks + 0.5) / factor - 0.5
    via_copy = align_face(copy, copy_landmarks, template)
    assert np.abs(new.astype(int) - via_copy).mean() < 0.5
    assert np.abs(new.astype(int) - via_copy).max() <= 3

    new_err = np.abs(new.astype(int) - reference).mean()
    plain_err = np.abs(plain.astype(int) - reference).mean()
    assert new_err < 4 and new_err < plain_err


def test_a_face_at_the_edge_of_a_big_image_still_aligns(photo, mtcnn):
    found = mtcnn.detect(photo)[0]
    big, landmarks = upscaled(photo, found.landmarks)
    # Cut the image through the face: the crop reaches past the top-left corner.
    cx, cy = landmarks[2].astype(int)
    cut = np.ascontiguousarray(big[cy - 300 :, cx - 300 :])
    shifted = landmarks - [cx - 300, cy - 300]
    new = align_face(cut, shifted)
    whole = align_face(big, landmarks)
    inside = new.sum(axis=2) > 0
    assert 0.2 < inside.mean() < 0.9
    assert np.abs(new.astype(int) - whole)[inside].mean() < 3


def test_landmarks_off_the_image_give_a_black_crop():
    image = np.full((300, 300, 3), 200, np.uint8)
    landmarks = scaled_landmarks(0.1, at=(5000.0, 5000.0))
    out = align_face(image, landmarks)
    assert out.shape == (112, 112, 3) and not out.any()
