"""Typed errors with a stable code and the HTTP status the API will answer with.

Every refusal in decoding, detection and alignment raises one of these, so callers (the HTTP
layer, `facemargin prepare`) can report a clear reason and never a traceback.
"""

from __future__ import annotations

import math


class FaceMarginError(Exception):
    """Base of every expected, user-facing failure."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer must carry (Retry-After, WWW-Authenticate)."""
        return {}

    def about(self, field: str) -> FaceMarginError:
        """This error, naming the request field it concerns (a verify request has two
        images: the client must know which one was refused)."""
        if self.details.get("field") != field:
            self.message = f"{field}: {self.message}"
            self.args = (self.message,)
            self.details = {"field": field, **self.details}
        return self


class InvalidImage(FaceMarginError):
    """The bytes are not a readable image (empty, truncated, corrupt)."""

    code = "invalid_image"
    http_status = 400


class ImageTooLarge(FaceMarginError):
    """The file, or the pixel count declared in its header, is over the configured cap."""

    code = "payload_too_large"
    http_status = 413


class UnsupportedImageType(FaceMarginError):
    """The content is an image format we do not accept, or not an image at all."""

    code = "unsupported_media_type"
    http_status = 415


class UnsupportedBody(FaceMarginError):
    """The request body is not multipart/form-data (JSON with base64 photos, raw bytes)."""

    code = "unsupported_media_type"
    http_status = 415


class NoFace(FaceMarginError):
    code = "face_not_found"
    http_status = 422


class MultipleFaces(FaceMarginError):
    code = "multiple_faces"
    http_status = 422


class FaceTooSmall(FaceMarginError):
    code = "face_too_small"
    http_status = 422


class LowQuality(FaceMarginError):
    """The face's embedding norm is below the enrolment floor (blurred, occluded, not a face)."""

    code = "low_quality"
    http_status = 422


class Unauthorized(FaceMarginError):
    code = "unauthorized"
    http_status = 401
    # RFC 9110 requires a 401 to name the scheme it accepts. An API key in a header has no
    # registered scheme; this names ours and the header it travels in.
    challenge = 'ApiKey realm="facemargin", header="X-API-Key"'

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RateLimited(FaceMarginError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, {"retry_after_s": round(retry_after, 3)})
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after)


class NotReady(FaceMarginError):
    code = "not_ready"
    http_status = 503


class Overloaded(FaceMarginError):
    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, details: dict, retry_after: float) -> None:
        """`retry_after`: seconds until the work queued now has likely drained."""
        super().__init__(message, details | {"retry_after_s": round(retry_after, 3)})
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return _retry_after(self.retry_after)


class InvalidRequest(FaceMarginError):
    """A well-formed request with values the API cannot accept."""

    code = "invalid_request"
    http_status = 422


class ThresholdUnavailable(FaceMarginError):
    """The request named a FAR the model was not calibrated at (or it has no thresholds)."""

    code = "threshold_unavailable"
    http_status = 422


class ConflictingSubject(FaceMarginError):
    """An enrolment face is closer to another subject than to the one it is enrolled as."""

    code = "closer_to_another_subject"
    http_status = 422


class DuplicateTemplate(FaceMarginError):
    """The photo is already enrolled: its embedding equals a stored template's within float
    noise (the same pixels give the same embedding, whatever the file's bytes)."""

    code = "duplicate_template"
    http_status = 409


class NothingEnrolled(FaceMarginError):
    """Every photo of an enrolment was rejected: the code is theirs when they share one, and
    each photo's reason is in the details (`rejected`: index, filename, code, message)."""

    http_status = 422

    def __init__(self, rejected: list, statuses: list[int]) -> None:
        """`rejected`: the photos' RejectedImage records; `statuses`: each one's own HTTP
        status. One reason shared by every photo answers with that reason's code and status,
        as the same problem does on every other route; mixed reasons are 422."""
        codes = {r.code for r in rejected}
        self.code = codes.pop() if len(codes) == 1 else "no_image_enrolled"
        self.http_status = (
            statuses[0] if len(set(statuses)) == 1 and self.code != "no_image_enrolled" else 422
        )
        message = (
            f"no image was enrolled: {rejected[0].message}"
            if len(rejected) == 1
            else f"none of the {len(rejected)} images was enrolled"
        )
        super().__init__(message, {"rejected": [r.model_dump() for r in rejected]})
