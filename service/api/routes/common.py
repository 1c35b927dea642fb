"""What several routers share: authorisation, uploads, thresholds, face descriptions."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Header, Request

from service.api.deps import RuntimeDep
from service.api.runtime import Runtime
from service.api.schemas import Box, DetectedFace, OperatingPoint, UsedFace
from service.api.security import API_KEY_HEADER
from service.vision.detection import Face
from service.vision.errors import ThresholdUnavailable, UnsupportedBody
from service.vision.faces import PhotoFaces
from service.vision.preprocess import AlignedFace


async def authorize(
    runtime: RuntimeDep,
    api_key: Annotated[
        str | None, Header(alias=API_KEY_HEADER, description="Needed when keys are configured.")
    ] = None,
) -> str:
    """The caller's key name, after the key and its rate limit are checked."""
    name = runtime.keys.identify(api_key)
    runtime.limiter.check(name)
    return name


async def multipart_body(request: Request) -> None:
    """Photos travel as multipart uploads: raw bytes, with no base64 inflation (a third more
    to send, parse and hold). Any other body (a JSON document of base64 photos, a bare image)
    gets a 415 that says what to send, not a 422 listing every form field as missing."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise UnsupportedBody(
            f"send photos as multipart/form-data, not {kind or 'a body without a content type'}",
            {"content_type": kind or None, "expected": "multipart/form-data"},
        )


def operating_point(runtime: Runtime, threshold: float | None, far: float | None) -> OperatingPoint:
    """An explicit threshold, else the calibrated one at `far` (or the default FAR)."""
    if threshold is not None:
        return OperatingPoint(threshold=threshold, source="explicit")
    contract = runtime.contract
    target = far if far is not None else runtime.settings.default_far
    value = contract.threshold_at(target)
    if value is None:
        available = (
            [p.far for p in contract.calibration.operating_points] if contract.calibration else []
        )
        raise ThresholdUnavailable(
            f"model {contract.model_id} has no threshold calibrated at FAR {target:g}; "
            + (
                f"calibrated FARs: {', '.join(f'{f:g}' for f in available)}"
                if available
                else "pass an explicit threshold"
            ),
            {"far": target, "calibrated_fars": available},
        )
    return OperatingPoint(
        threshold=value,
        source="calibrated",
        far=target,
        protocol=contract.calibration.protocol if contract.calibration else None,
    )


def describe(face: Face) -> DetectedFace:
    return DetectedFace(
        box=Box(**dict(zip(("x1", "y1", "x2", "y2"), map(float, face.box), strict=True))),
        score=min(max(float(face.score), 0.0), 1.0),
        landmarks=[(float(x), float(y)) for x, y in face.landmarks],
    )


def used_face(aligned: AlignedFace, norm: float, photo: PhotoFaces, runtime: Runtime) -> UsedFace:
    quality = runtime.contract.quality(float(norm))
    return UsedFace(
        **describe(aligned.face).model_dump(),
        quality=None if quality is None else round(quality, 4),
        faces_in_image=photo.detected,
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.clip(np.dot(a.astype(np.float64), b.astype(np.float64)), -1.0, 1.0))
