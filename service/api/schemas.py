"""Pydantic models for every request and response body of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

SUBJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable, machine-readable error code.", examples=["face_not_found"]
    )
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = Field(None, description="Also in the X-Request-ID header.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyCheck(BaseModel):
    ok: bool
    detail: str = ""


class Ready(BaseModel):
    ready: bool
    checks: dict[str, ReadyCheck]


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


class UsedFace(DetectedFace):
    """A face the request used, with the embedding's quality signal."""

    quality: float | None = Field(
        description="Embedding norm relative to the calibration faces' median (1.0 = typical; "
        "low for blur, occlusion, non-faces). None when the model carries no norm statistics."
    )
    faces_in_image: int = Field(description="Faces the detector found in this image.")


class OperatingPoint(BaseModel):
    threshold: float = Field(description="Cosine similarity at or above which faces match.")
    source: Literal["calibrated", "explicit"]
    far: float | None = Field(
        None,
        description="False-accept rate of one comparison at this threshold (the target, or "
        "read off the model's calibration curve); None when the calibration cannot say.",
    )
    protocol: str | None = Field(None, description="Where the threshold was measured.")
    fpir: float | None = Field(
        None,
        description="Identify: the false-positive identification rate asked for (the chance a "
        "stranger is matched to someone), when the threshold was derived from it.",
    )
    comparisons: int | None = Field(
        None,
        description="Identify: gallery entries a probe is compared with (templates under the "
        "best rule, subjects under the mean rule).",
    )
    expected_fpir: float | None = Field(
        None,
        description="Identify: what the threshold means for this gallery, the chance a stranger "
        "is matched to someone: 1 - (1 - far)^comparisons (about comparisons x far).",
    )


class VerifyResponse(BaseModel):
    similarity: float = Field(ge=-1.0, le=1.0, description="Cosine similarity of the faces.")
    match: bool
    threshold: OperatingPoint
    faces: list[UsedFace] = Field(min_length=2, max_length=2)
    model_id: str


class EnrolledTemplate(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    filename: str | None
    template_id: int
    quality: float | None
    face: DetectedFace


class RejectedImage(BaseModel):
    index: int
    filename: str | None
    code: str = Field(examples=["multiple_faces"])
    message: str
    details: dict[str, Any] = Field(
        default_factory=dict, description="The error's details, e.g. the boxes of the faces found."
    )


class EnrollResponse(BaseModel):
    subject_id: str
    enrolled: list[EnrolledTemplate]
    rejected: list[RejectedImage]
    template_count: int = Field(description="The subject's templates after this request.")
    model_id: str


class Candidate(BaseModel):
    subject_id: str
    similarity: float
    display_name: str | None = None


class IdentifiedFace(BaseModel):
    face: UsedFace
    candidates: list[Candidate] = Field(description="Best first, at most top_k.")
    decision: Literal["match", "unknown"]
    subject_id: str | None = Field(
        description="The matched subject, or null when nobody reaches the threshold."
    )


class IdentifyResponse(BaseModel):
    faces: list[IdentifiedFace]
    threshold: OperatingPoint
    score_rule: Literal["best", "mean"]
    model_id: str


class EmbeddedFace(BaseModel):
    face: UsedFace
    embedding: list[float] = Field(description="L2-normalised; cosine = dot product.")
    norm: float


class EmbedResponse(BaseModel):
    faces: list[EmbeddedFace]
    model_id: str
    embedding_dim: int


class TemplateInfo(BaseModel):
    template_id: int
    model_id: str
    quality: float | None
    image_sha256: str | None
    created_at: datetime


class SubjectInfo(BaseModel):
    subject_id: str
    display_name: str | None
    metadata: dict[str, Any]
    created_at: datetime
    template_count: int


class SubjectDetail(SubjectInfo):
    templates: list[TemplateInfo]


class SubjectPage(BaseModel):
    subjects: list[SubjectInfo]
    total: int
    limit: int
    offset: int


class Deleted(BaseModel):
    subject_id: str
    templates_removed: int


class GalleryStats(BaseModel):
    subjects: int
    templates: int = Field(description="Templates in the store.")
    indexed_templates: int = Field(description="Templates in this replica's search index.")
    last_change: int = Field(description="The last store change this replica has applied.")
    store_change: int = Field(description="The last change in the store (replica lag: the gap).")
    index_kind: str
    hnsw_ef_search: int | None = Field(description="HNSW's search breadth; null when exact.")
    index_loaded_from: Literal["store", "snapshot"] = Field(
        description="How this replica filled its index at start: rebuilt from the store, or read "
        "back from its HNSW snapshot and brought up to date from the change log."
    )
    index_on_gpu: bool


class Info(BaseModel):
    version: str
    model: dict[str, Any] = Field(description="The model's contract, as in its ONNX file.")
    providers: list[str]
    detector: str
    gallery: GalleryStats | None
    gallery_error: str | None
    default_far: float
    score_rule: str
    auth: bool
    rate_limit_per_minute: int
