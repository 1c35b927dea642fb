"""POST /enroll and /identify, and the subjects they fill."""

from __future__ import annotations

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile

from service.api.deps import RuntimeDep
from service.api.enrolment import enroll_photos
from service.api.routes.common import (
    authorize,
    identify_point,
    multipart_body,
    no_unknown_fields,
    used_face,
)
from service.api.schemas import (
    SUBJECT_ID_PATTERN,
    Candidate,
    Deleted,
    EnrollResponse,
    IdentifiedFace,
    IdentifyResponse,
    SubjectDetail,
    SubjectInfo,
    SubjectPage,
    TemplateInfo,
)
from service.gallery import Gallery, MatchRule
from service.gallery.records import Subject
from service.vision.detection import FacePolicy
from service.vision.errors import (
    InvalidRequest,
)

router = APIRouter(tags=["gallery"], dependencies=[Depends(authorize), Depends(no_unknown_fields)])
SubjectId = Annotated[str, Path(pattern=SUBJECT_ID_PATTERN, description="Your id for the person.")]
# Template ids are the store's 64-bit row ids (SQLite INTEGER, PostgreSQL BIGINT): anything
# wider is refused as a 422 before it reaches a database driver that cannot bind it.
TemplateId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The template's id.")]
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
    runtime: RuntimeDep,
    subject_id: Annotated[str, Form(pattern=SUBJECT_ID_PATTERN)],
    images: Annotated[list[UploadFile], File(description="One face per photo.")],
    display_name: Annotated[str | None, Form(max_length=256)] = None,
    metadata: Annotated[str | None, Form(description="A JSON object, up to 4 KiB.")] = None,
    face_policy: Annotated[
        FacePolicy,
        Form(
            description="Which face of a photo with several: dominant (default: the largest "
            "when its box has at least twice the area of every other, else the photo is "
            "refused as multiple_faces with every face's box), largest, central or single "
            "(exactly one face). Not all: one template per photo."
        ),
    ] = FacePolicy.dominant,
) -> EnrollResponse:
    """Store one template per accepted photo. Each photo is accepted or rejected on its own
    (no face, an ambiguous group, face too small, low quality, or closer to another subject
    when FACEMARGIN_CHECK_ENROLL_CONFLICTS is on); the subject is stored only if one is
    accepted."""
    if face_policy is FacePolicy.all:
        raise InvalidRequest(
            "face_policy=all is not allowed on /enroll: one template per photo",
            {"field": "face_policy"},
        )
    if len(images) > runtime.settings.max_images_per_enroll:
        raise InvalidRequest(
            f"{len(images)} images; at most {runtime.settings.max_images_per_enroll} per request"
        )
    extra = _metadata(metadata)
    gallery = runtime.require_gallery()
    async with runtime.admitted():
        return await enroll_photos(
            runtime, gallery, subject_id, images, display_name, extra, face_policy
        )


def candidates_named(
    gallery: Gallery, vectors: np.ndarray, top_k: int, rule: MatchRule
) -> tuple[list, dict[str, str | None]]:
    """The search and its candidates' display names, in one trip to the worker pool (each
    trip is a thread hop and a wake-up of the event loop: bench/README.md, overhead.py)."""
    ranked = gallery.identify(vectors, top_k=top_k, rule=rule)
    names = gallery.display_names(sorted({c.subject_id for row in ranked for c in row}))
    return ranked, names


@router.post("/identify", response_model=IdentifyResponse, dependencies=[Depends(multipart_body)])
async def identify(
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP photo.")],
    runtime: RuntimeDep,
    top_k: Annotated[int, Form(ge=1)] = 5,
    threshold: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="Explicit cosine threshold.")
    ] = None,
    far: Annotated[
        float | None,
        Form(
            gt=0.0,
            lt=1.0,
            description="False-accept rate PER COMPARISON. A stranger is compared with every "
            "gallery entry, so the chance they are matched to someone grows with the gallery: "
            "about comparisons x far (with 1,000 templates, far=1e-3 matches a stranger 63% "
            "of the time). Prefer fpir.",
        ),
    ] = None,
    fpir: Annotated[
        float | None,
        Form(
            gt=0.0,
            lt=1.0,
            description="False-positive identification rate: the chance a stranger is matched "
            "to someone, whatever the gallery's size (default FACEMARGIN_DEFAULT_FPIR, 0.01).",
        ),
    ] = None,
    face_policy: Annotated[
        FacePolicy, Form(description="largest (default) or all faces.")
    ] = FacePolicy.largest,
    score_rule: Annotated[MatchRule | None, Form(description="best or mean template.")] = None,
) -> IdentifyResponse:
    """Who is this? Open set: a face whose best candidate is under the threshold is
    `unknown`; the candidates are listed either way, and are never a match on their own. The
    threshold block says what the threshold means for this gallery (`expected_fpir`)."""
    if top_k > runtime.settings.max_top_k:
        raise InvalidRequest(
            f"top_k is at most {runtime.settings.max_top_k}",
            {"field": "top_k", "max": runtime.settings.max_top_k},
        )
    if sum(v is not None for v in (threshold, far, fpir)) > 1:
        raise InvalidRequest("give at most one of threshold, far and fpir")
    rule = score_rule or runtime.settings.score_rule
    gallery = runtime.require_gallery()
    point = identify_point(runtime, threshold, far, fpir, gallery.comparisons(rule))
    async with runtime.admitted():
        photo = await runtime.pipeline.faces(image, face_policy, "image")
        embedded = await runtime.pipeline.embed(photo.faces)
        ranked, names = await runtime.pipeline.run(
            "search", lambda: candidates_named(gallery, embedded.vectors, top_k, rule)
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
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # Bounded so no database sees an integer wider than its own (SQLite and PostgreSQL: 64 bits).
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> SubjectPage:
    """Enrolled subjects in subject_id order."""
    gallery = runtime.require_gallery()
    page = await runtime.pipeline.run(
        "store", lambda: gallery.list_subjects(limit=limit, offset=offset)
    )
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
async def get_subject(subject_id: SubjectId, runtime: RuntimeDep) -> SubjectDetail:
    gallery = runtime.require_gallery()
    detail = await runtime.pipeline.run("store", gallery.get_subject, subject_id)
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
async def delete_subject(subject_id: SubjectId, runtime: RuntimeDep) -> Deleted:
    """Remove the subject and all its templates from the store and the index; no later
    request on this replica will return it (others within FACEMARGIN_SYNC_INTERVAL_S)."""
    gallery = runtime.require_gallery()
    removed = await runtime.pipeline.run("store", gallery.delete_subject, subject_id)
    return Deleted(subject_id=subject_id, templates_removed=removed)


@router.delete("/subjects/{subject_id}/templates/{template_id}", response_model=Deleted)
async def delete_template(
    subject_id: SubjectId, template_id: TemplateId, runtime: RuntimeDep
) -> Deleted:
    gallery = runtime.require_gallery()
    await runtime.pipeline.run("store", gallery.delete_template, subject_id, template_id)
    return Deleted(subject_id=subject_id, templates_removed=1)
