"""Pydantic models for every request and response body of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code.", examples=["no_face"])
    message: str = Field(description="What went wrong, for people.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class DetectedFace(BaseModel):
    box: Box
    score: float = Field(ge=0.0, le=1.0, description="Detector confidence.")
    landmarks: list[tuple[float, float]] = Field(
        min_length=5,
        max_length=5,
        description="Eyes (image left, image right), nose tip, mouth corners (left, right).",
    )


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str = Field(examples=["JPEG"])
    exif_orientation: int = Field(ge=1, le=8)


class DetectResponse(BaseModel):
    image: ImageInfo
    faces: list[DetectedFace] = Field(description="Every face found, best score first.")
