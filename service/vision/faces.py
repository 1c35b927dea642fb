"""From uploaded bytes to aligned faces, with the refusals a face API owes its callers.

Runs in worker threads (decoding and detection are CPU work that must stay off the event
loop); embedding happens later, batched across requests, in `service.api.batching`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np

from service.vision.alignment import Template
from service.vision.detection import Detector, Face, FacePolicy
from service.vision.errors import FaceMarginError, FaceTooSmall, MultipleFaces, NoFace
from service.vision.imaging import DecodedImage, decode_image
from service.vision.preprocess import AlignedFace, detect_and_align


@dataclass(frozen=True)
class PhotoLimits:
    """What a photo may be: its encoded size, its pixel count (read from the header, before
    decoding) and the smallest face kept, measured on the photo as sent."""

    max_bytes: int
    max_pixels: int
    min_face_px: int


@dataclass(frozen=True)
class PhotoFaces:
    image: DecodedImage
    faces: list[AlignedFace]  # boxes and landmarks on the photo as sent (see `on_photo`)
    detected: int
    sha256: str
    decode_s: float
    detect_s: float  # detection and alignment


def on_photo(face: Face, scale: float) -> Face:
    """`face`, found in pixels decoded at `scale` (`DecodedImage.scale`), in the coordinates of
    the photo as sent: what clients see, and what `min_face_px` is measured in."""
    if scale == 1.0:
        return face
    box = (np.asarray(face.box) / scale).astype(np.float32)
    landmarks = (np.asarray(face.landmarks) / scale).astype(np.float32)
    return replace(face, box=box, landmarks=landmarks)


def short_side(face: Face) -> float:
    x1, y1, x2, y2 = face.box
    return float(min(x2 - x1, y2 - y1))


def read_faces(
    data: bytes,
    detector: Detector,
    template: Template,
    policy: FacePolicy,
    limits: PhotoLimits,
    what: str = "image",
) -> PhotoFaces:
    """Decode, detect and align; raise the typed error a client can act on. `what` names the
    field in messages (a verify request has two images)."""
    start = time.perf_counter()
    try:
        image = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    except FaceMarginError as error:
        raise error.about(what) from None
    decoded = time.perf_counter()
    aligned, detected = detect_and_align(image.pixels, detector, policy, template)
    timings = (decoded - start, time.perf_counter() - decoded)
    aligned = [replace(a, face=on_photo(a.face, image.scale)) for a in aligned]
    if not aligned:
        raise NoFace(f"{what}: no face found", {"field": what})
    if policy in (FacePolicy.single, FacePolicy.dominant) and len(aligned) > 1:
        expected = "exactly one" if policy is FacePolicy.single else "one clearly largest"
        raise MultipleFaces(
            f"{what}: {len(aligned)} faces found, {expected} expected; choose one with "
            "face_policy=largest or central, or crop the photo",
            {
                "field": what,
                "faces": len(aligned),
                "boxes": [[round(float(v), 1) for v in a.face.box] for a in aligned],
            },
        )
    min_face_px = limits.min_face_px
    large = [a for a in aligned if short_side(a.face) >= min_face_px]
    if not large:
        side = max(short_side(a.face) for a in aligned)
        raise FaceTooSmall(
            f"{what}: the face is {side:.0f} px across, under the {min_face_px} px minimum",
            {"field": what, "face_px": round(side, 1), "min_face_px": min_face_px},
        )
    return PhotoFaces(image, large, detected, hashlib.sha256(data).hexdigest(), *timings)


def stack(faces: list[AlignedFace], template: Template) -> np.ndarray:
    """Aligned faces as one (N, size, size, 3) batch; N may be 0."""
    if not faces:
        return np.zeros((0, template.size, template.size, 3), np.uint8)
    return np.stack([f.pixels for f in faces])
