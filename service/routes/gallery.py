"""POST /enroll and /identify, and the subjects they fill."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile

from service.gallery import NewTemplate
from service.gallery.records import Subject
from service.routes.common import (
    authorize,
    describe,
    faces_of,
    multipart_body,
    operating_point,
    used_face,
)
from service.runtime import Runtime, get_runtime
from service.schemas import (
    SUBJECT_ID_PATTERN,
    Candidate,
    Deleted,
    EnrolledTemplate,
    EnrollResponse,
    IdentifiedFace,
    IdentifyResponse,
    RejectedImage,
    SubjectDetail,
    SubjectInfo,
    SubjectPage,
    TemplateInfo,
)
from service.settings import ScoreRule
from service.vision.errors import (
    ConflictingSubject,
    FaceMarginError,
    InvalidRequest,
    LowQuality,
    NothingEnrolled,
)
from service.vision.faces import PhotoFaces, Policy, stack

router = APIRouter(tags=["gallery"], dependencies=[Depends(authorize)])
SubjectId = Annotated[str, Path(pattern=SUBJECT_ID_PATTERN, description="Your id for the person.")]
MAX_METADATA_BYTES = 4096


def _metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata is over {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"metadata is not JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be a JSON object")
    return value


@router.post("/enroll", response_model=EnrollResponse, dependencies=[Depends(multipart_body)])
async def enroll(
    runtime: Annotated[Runtime, Depends(get_runtime)],
    subject_id: Annotated[str, Form(pattern=SUBJECT_ID_PATTERN)],
    images: Annotated[list[UploadFile], File(description="One face per photo.")],
    display_name: Annotated[str | None, Form(max_length=256)] = None,
    metadata: Annotated[str | None, Form(description="A JSON object, up to 4 KiB.")] = None,
) -> EnrollResponse:
    """Store one template per accepted photo. Each photo is accepted or rejected on its own
    (no face, several faces, face too small, low quality, or closer to another subject when
    FACEMARGIN_CHECK_ENROLL_CONFLICTS is on); the subject is stored only if one is accepted."""
    settings = runtime.settings
    if len(images) > settings.max_images_per_enroll:
        raise InvalidRequest(
            f"{len(images)} images; at most {settings.max_images_per_enroll} per request"
        )
    extra = _metadata(metadata)
    gallery = runtime.require_gallery()
    rejected: list[RejectedImage] = []
    accepted: list[tuple[int, UploadFile, PhotoFaces]] = []
    async with runtime.admitted():
        photos = await asyncio.gather(
            *(
                faces_of(upload, runtime, Policy.single, f"images[{index}]")
                for index, upload in enumerate(images)
            ),
            return_exceptions=True,
        )
        for index, (upload, photo) in enumerate(zip(images, photos, strict=True)):
            if isinstance(photo, FaceMarginError) and photo.http_status < 500:
                rejected.append(_rejection(index, upload, photo))
            elif isinstance(photo, BaseException):
                raise photo
            else:
                accepted.append((index, upload, photo))
        embedded = await runtime.batcher.embed(
            stack([p.faces[0] for _, _, p in accepted], runtime.template)
        )
        floor = settings.min_enroll_quality
        if floor is None:
            floor = runtime.contract.default_min_quality()
        templates, kept = [], []
        for (index, upload, photo), vector, norm in zip(
            accepted, embedded.vectors, embedded.norms, strict=True
        ):
            quality = runtime.contract.quality(float(norm))
            problem: FaceMarginError | None = None
            if floor is not None and quality is not None and quality < floor:
                problem = LowQuality(
                    f"face quality {quality:.3f} is under the enrolment floor {floor:.3f}"
                )
            elif settings.check_enroll_conflicts:
                problem = await runtime.run("search", _conflict, runtime, subject_id, vector)
            if problem is not None:
                rejected.append(_rejection(index, upload, problem))
                continue
            templates.append(
                NewTemplate(embedding=vector, quality=quality, image_sha256=photo.sha256)
            )
            kept.append((index, upload, photo, quality))
        if not templates:
            raise NothingEnrolled(sorted(rejected, key=lambda r: r.index))
        ids = await runtime.run(
            "store",
            lambda: gallery.enroll(
                subject_id, templates, display_name=display_name, metadata=extra
            ),
        )
        subject = (await runtime.run("store", gallery.get_subject, subject_id)).subject
    rejected.sort(key=lambda r: r.index)
    return EnrollResponse(
        subject_id=subject_id,
        enrolled=[
            EnrolledTemplate(
                index=index,
                filename=upload.filename,
                template_id=template_id,
                quality=quality,
                face=describe(photo.faces[0].face),
            )
            for (index, upload, photo, quality), template_id in zip(kept, ids, strict=True)
        ],
        rejected=rejected,
        template_count=subject.template_count,
        model_id=runtime.contract.model_id,
    )


def _rejection(index: int, upload: UploadFile, error: FaceMarginError) -> RejectedImage:
    return RejectedImage(
        index=index, filename=upload.filename, code=error.code, message=error.message
    )


def _conflict(runtime: Runtime, subject_id: str, vector: np.ndarray) -> FaceMarginError | None:
    """The face is closer to someone else than to the subject it is enrolled as (or, for a new
    subject, matches someone else at the default operating point)."""
    gallery = runtime.require_gallery()
    (candidates,) = gallery.identify(vector[None], top_k=2, rule=runtime.settings.score_rule.value)
    others = [c for c in candidates if c.subject_id != subject_id]
    own = [c for c in candidates if c.subject_id == subject_id]
    if not others:
        return None
    rival = others[0]
    threshold = runtime.contract.threshold_at(runtime.settings.default_far)
    if (own and rival.similarity > own[0].similarity) or (
        not own and threshold is not None and rival.similarity >= threshold
    ):
        return ConflictingSubject(
            f"the face is closer to subject {rival.subject_id!r} (cosine {rival.similarity:.3f})"
        )
    return None


@router.post("/identify", response_model=IdentifyResponse, dependencies=[Depends(multipart_body)])
async def identify(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP photo.")],
    runtime: Annotated[Runtime, Depends(get_runtime)],
    top_k: Annotated[int, Form(ge=1)] = 5,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    far: Annotated[float | None, Form(gt=0.0, lt=1.0)] = None,
    face_policy: Annotated[
        Policy, Form(description="largest (default) or all faces.")
    ] = Policy.largest,
    score_rule: Annotated[ScoreRule | None, Form(description="best or mean template.")] = None,
) -> IdentifyResponse:
    """Who is this? Open set: a face whose best candidate is under the threshold is
    `unknown`; the candidates are listed either way, and are never a match on their own."""
    if top_k > runtime.settings.max_top_k:
        raise InvalidRequest(f"top_k is at most {runtime.settings.max_top_k}")
    point = operating_point(runtime, threshold, far)
    rule = score_rule or runtime.settings.score_rule
    gallery = runtime.require_gallery()
    async with runtime.admitted():
        photo = await faces_of(image, runtime, face_policy, "image")
        embedded = await runtime.batcher.embed(stack(photo.faces, runtime.template))
        ranked = await runtime.run(
            "search", lambda: gallery.identify(embedded.vectors, top_k=top_k, rule=rule.value)
        )
    names = await runtime.run(
        "store", gallery.display_names, sorted({c.subject_id for row in ranked for c in row})
    )
    faces = []
    for aligned, norm, row in zip(photo.faces, embedded.norms, ranked, strict=True):
        candidates = [
            Candidate(
                subject_id=c.subject_id,
                similarity=round(float(c.similarity), 6),
                display_name=names.get(c.subject_id),
            )
            for c in row
        ]
        matched = (
            candidates[0] if candidates and candidates[0].similarity >= point.threshold else None
        )
        faces.append(
            IdentifiedFace(
                face=used_face(aligned, norm, photo, runtime),
                candidates=candidates,
                decision="match" if matched else "unknown",
                subject_id=matched.subject_id if matched else None,
            )
        )
    return IdentifyResponse(
        faces=faces, threshold=point, score_rule=rule.value, model_id=runtime.contract.model_id
    )


@router.get("/subjects", response_model=SubjectPage)
async def list_subjects(
    runtime: Annotated[Runtime, Depends(get_runtime)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # Bounded so no database sees an integer wider than its own (SQLite and PostgreSQL: 64 bits).
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> SubjectPage:
    """Enrolled subjects in subject_id order."""
    gallery = runtime.require_gallery()
    page = await runtime.run("store", lambda: gallery.list_subjects(limit=limit, offset=offset))
    return SubjectPage(
        subjects=[_subject_info(s) for s in page.subjects],
        total=page.total,
        limit=limit,
        offset=offset,
    )


def _subject_info(subject: Subject) -> SubjectInfo:
    return SubjectInfo(
        subject_id=subject.subject_id,
        display_name=subject.display_name,
        metadata=subject.metadata,
        created_at=subject.created_at,
        template_count=subject.template_count,
    )


@router.get("/subjects/{subject_id}", response_model=SubjectDetail)
async def get_subject(
    subject_id: SubjectId, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> SubjectDetail:
    gallery = runtime.require_gallery()
    detail = await runtime.run("store", gallery.get_subject, subject_id)
    return SubjectDetail(
        **_subject_info(detail.subject).model_dump(),
        templates=[
            TemplateInfo(
                template_id=t.id,
                model_id=t.model_id,
                quality=t.quality,
                image_sha256=t.image_sha256,
                created_at=t.created_at,
            )
            for t in detail.templates
        ],
    )


@router.delete("/subjects/{subject_id}", response_model=Deleted)
async def delete_subject(
    subject_id: SubjectId, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> Deleted:
    """Remove the subject and all its templates from the store and the index; no later
    request on this replica will return it (others within FACEMARGIN_SYNC_INTERVAL_S)."""
    gallery = runtime.require_gallery()
    removed = await runtime.run("store", gallery.delete_subject, subject_id)
    return Deleted(subject_id=subject_id, templates_removed=removed)


@router.delete("/subjects/{subject_id}/templates/{template_id}", response_model=Deleted)
async def delete_template(
    subject_id: SubjectId, template_id: int, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> Deleted:
    gallery = runtime.require_gallery()
    await runtime.run("store", gallery.delete_template, subject_id, template_id)
    return Deleted(subject_id=subject_id, templates_removed=1)
