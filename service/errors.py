"""Typed errors with a stable code and the HTTP status the API will answer with.

Every refusal in decoding, detection and alignment raises one of these, so callers (the HTTP
layer, `facemargin prepare`) can report a clear reason and never a traceback.
"""

from __future__ import annotations


class FaceMarginError(Exception):
    """Base of every expected, user-facing failure."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(FaceMarginError):
    """The bytes are not a readable image (empty, truncated, corrupt)."""

    code = "invalid_image"
    http_status = 400


class ImageTooLarge(FaceMarginError):
    """The file, or the pixel count declared in its header, is over the configured cap."""

    code = "image_too_large"
    http_status = 413


class UnsupportedImageType(FaceMarginError):
    """The content is an image format we do not accept, or not an image at all."""

    code = "unsupported_image_type"
    http_status = 415


class NoFace(FaceMarginError):
    code = "no_face"
    http_status = 422


class MultipleFaces(FaceMarginError):
    code = "multiple_faces"
    http_status = 422


class FaceTooSmall(FaceMarginError):
    code = "face_too_small"
    http_status = 422
