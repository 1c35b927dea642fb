"""What several routers share: authorisation, uploads, thresholds, face descriptions."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import Header, Request

from service.api.deps import RuntimeDep
from service.api.runtime import Runtime
from service.api.schemas import Box, DetectedFace, OperatingPoint, UsedFace
from service.api.security import API_KEY_HEADER
from service.vision.contract import ModelContract
from service.vision.detection import Face
from service.vision.errors import InvalidRequest, ThresholdUnavailable, UnsupportedBody
from service.vision.faces import PhotoFaces
from service.vision.preprocess import AlignedFace


async def authorize(
    runtime: RuntimeDep,
    api_key: Annotated[
        str | None, Header(alias=API_KEY_HEADER, description="Needed when keys are configured.")
    ] = None,
) -> str:
    """The caller's key name. The key and its rate limit were checked from the headers
    before the body was read (app.py, RefuseBeforeBody); this declares the header in the API
    document, and refuses again should a route ever be served without that middleware."""
    return runtime.keys.identify(api_key)


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


def _declared(dependant: Any) -> tuple[set[str], set[str]]:
    """(query names, form field names) a route and its dependencies declare."""
    query = {f.alias for f in dependant.query_params}
    body = {f.alias for f in dependant.body_params}
    for sub in dependant.dependencies:
        more_query, more_body = _declared(sub)
        query |= more_query
        body |= more_body
    return query, body


# Cached on the route object (routes are neither hashable nor changed once the app is built).
_DECLARED = "_facemargin_declared"


async def no_unknown_fields(request: Request) -> None:
    """A misspelt parameter (`threshhold`, `topk`, `?threshold=` on a form route) is a 422
    naming it, not a request silently run with the defaults."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    declared = getattr(route, _DECLARED, None)
    if declared is None:
        declared = _declared(dependant)
        setattr(route, _DECLARED, declared)
    query, body = declared
    unknown = sorted(set(request.query_params) - query)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        unknown += sorted(set((await request.form()).keys()) - body)
    if unknown:
        raise InvalidRequest(
            f"unknown parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
            f"this route takes: {', '.join(sorted(query | body)) or 'none'}",
            {"unknown": unknown, "allowed": sorted(query | body)},
        )


def operating_point(runtime: Runtime, threshold: float | None, far: float | None) -> OperatingPoint:
    """An explicit threshold, else the calibrated one at `far` (or the default FAR): any FAR
    on the model's calibration curve, or exactly one of its operating points."""
    contract = runtime.contract
    protocol = contract.calibration.protocol if contract.calibration else None
    if threshold is not None:
        return OperatingPoint(
            threshold=threshold, source="explicit", far=contract.far_on_curve(threshold)
        )
    target = far if far is not None else runtime.settings.default_far
    value = contract.threshold_on_curve(target)
    if value is None:
        raise _unavailable(contract, target)
    return OperatingPoint(threshold=value, source="calibrated", far=target, protocol=protocol)


def identify_point(
    runtime: Runtime,
    threshold: float | None,
    far: float | None,
    fpir: float | None,
    comparisons: int,
) -> OperatingPoint:
    """Identify's threshold. A probe is compared with `comparisons` gallery entries, so a
    per-comparison FAR f lets a stranger through with probability 1 - (1 - f)^comparisons:
    `fpir` (or FACEMARGIN_DEFAULT_FPIR when nothing is named) fixes that probability instead,
    and the FAR per comparison follows from the gallery's size. The answer says what the
    threshold means for this gallery either way."""
    contract = runtime.contract
    if threshold is None and far is None:
        target = fpir if fpir is not None else runtime.settings.default_fpir
        if target is not None and (fpir is not None or contract.strictest_far is not None):
            return _gallery_point(runtime, target, comparisons)
    point = operating_point(runtime, threshold, far)
    return point.model_copy(
        update={"comparisons": comparisons, "expected_fpir": _fpir(point.far, comparisons)}
    )


def _gallery_point(runtime: Runtime, fpir: float, comparisons: int) -> OperatingPoint:
    contract = runtime.contract
    found = contract.threshold_for_fpir(fpir, comparisons)
    if found is None or contract.calibration is None:
        raise _unavailable(contract, fpir, what="FPIR")
    # Past the strictest calibrated FAR, expected_fpir says honestly what the threshold means.
    threshold, far = found
    return OperatingPoint(
        threshold=threshold,
        source="calibrated",
        far=far,
        protocol=contract.calibration.protocol,
        fpir=fpir,
        comparisons=comparisons,
        expected_fpir=_fpir(far, comparisons),
    )


def _fpir(far: float | None, comparisons: int) -> float | None:
    return None if far is None else 1 - (1 - far) ** comparisons


def _unavailable(contract: ModelContract, target: float, what: str = "FAR") -> ThresholdUnavailable:
    curve = contract.calibration.far_curve if contract.calibration else []
    points = [p.far for p in contract.calibration.operating_points] if contract.calibration else []
    if curve:
        offered = f"calibrated FARs: {curve[-1].far:.2g} to {curve[0].far:g}"
    elif points:
        offered = f"calibrated FARs: {', '.join(f'{f:g}' for f in points)}"
    else:
        offered = "pass an explicit threshold"
    return ThresholdUnavailable(
        f"model {contract.model_id} has no threshold calibrated for {what} {target:g}; {offered}",
        {"far" if what == "FAR" else "fpir": target, "calibrated_fars": points},
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
