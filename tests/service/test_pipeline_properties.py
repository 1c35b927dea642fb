"""Property-based fuzzing of the decode → detect → align path (hypothesis): whatever image
arrives (any size from 1 px, any aspect, noise, flat colour, a real face pasted anywhere at
any scale, any format), the service either returns well-formed aligned faces or raises one of
its typed errors, and alignment survives degenerate landmarks."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.vision.alignment import ARCFACE_112, align_face
from service.vision.detection import FacePolicy
from service.vision.errors import FaceMarginError
from service.vision.faces import PhotoLimits, read_faces
from tests.conftest import load_rgb, sample_photos

FACE = load_rgb(sample_photos()[0])
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def pictures(draw) -> np.ndarray:
    height = draw(st.integers(1, 640))
    width = draw(st.integers(1, 640))
    kind = draw(st.sampled_from(["noise", "flat", "face"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    canvas = np.full((height, width, 3), draw(st.integers(0, 255)), dtype=np.uint8)
    if kind == "face":
        scale = draw(st.floats(0.05, 4.0))
        side = max(1, int(FACE.shape[0] * scale))
        face = np.asarray(Image.fromarray(FACE).resize((side, side)))
        top = draw(st.integers(-side + 1, height - 1))
        left = draw(st.integers(-side + 1, width - 1))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, height), min(left + side, width)
        canvas[y0:y1, x0:x1] = face[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@FUZZ
@given(picture=pictures(), fmt=st.sampled_from(["JPEG", "PNG", "WEBP", "BMP"]), data=st.data())
def test_any_picture_gives_aligned_faces_or_a_typed_error(mtcnn, picture, fmt, data):
    policy = data.draw(st.sampled_from(list(FacePolicy)))
    try:
        photo = read_faces(
            encoded(picture, fmt),
            mtcnn,
            ARCFACE_112,
            policy,
            PhotoLimits(
                max_bytes=20 * 1024 * 1024,
                max_pixels=40_000_000,
                min_face_px=data.draw(st.sampled_from([1, 32])),
            ),
        )
    except FaceMarginError as error:
        assert error.code and error.message
        event(f"refused: {error.code}")
        return
    event("faces returned")
    assert photo.faces and photo.detected >= len(photo.faces)
    height, width = photo.image.pixels.shape[:2]
    for face in photo.faces:
        assert face.pixels.shape == (112, 112, 3) and face.pixels.dtype == np.uint8
        assert np.isfinite(face.face.box).all() and np.isfinite(face.face.landmarks).all()
        x1, y1, x2, y2 = face.face.box
        # A box may reach past the edge (a face cut by the frame) but never lie outside it.
        assert x1 < width and y1 < height and x2 > 0 and y2 > 0
    if policy is not FacePolicy.all:
        assert len(photo.faces) == 1


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@FUZZ
@given(
    landmarks=st.lists(st.tuples(finite, finite), min_size=5, max_size=5),
    same_point=st.booleans(),
)
def test_alignment_survives_degenerate_landmarks(landmarks, same_point):
    points = np.array([landmarks[0]] * 5 if same_point else landmarks, dtype=np.float32)
    try:
        aligned = align_face(FACE, points)
    except ValueError:
        return  # a typed refusal is fine; a crash or a malformed crop is not
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
