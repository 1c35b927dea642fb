"""Enrolment's rules: which photos become templates. Each photo is accepted or rejected on
its own: no face, several faces, face too small, low quality (under the floor the model's
calibration suggests, or FACEMARGIN_MIN_ENROLL_QUALITY), already enrolled (a duplicate), or
closer to another subject when FACEMARGIN_CHECK_ENROLL_CONFLICTS is on; the subject is
stored only if one is accepted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import UploadFile

from service.api.routes.common import describe
from service.api.runtime import Runtime
from service.api.schemas import EnrolledTemplate, EnrollResponse, RejectedImage
from service.gallery import Gallery, NewTemplate
from service.vision.detection import FacePolicy
from service.vision.errors import (
    ConflictingSubject,
    DuplicateTemplate,
    FaceMarginError,
    LowQuality,
    NothingEnrolled,
)
from service.vision.faces import PhotoFaces


async def enroll_photos(
    runtime: Runtime,
    gallery: Gallery,
    subject_id: str,
    images: Sequence[UploadFile],
    display_name: str | None,
    metadata: dict[str, Any] | None,
    policy: FacePolicy = FacePolicy.dominant,
) -> EnrollResponse:
    pipeline = runtime.pipeline
    rejected: list[RejectedImage] = []
    statuses: list[int] = []
    accepted: list[tuple[int, UploadFile, PhotoFaces]] = []
    photos = await asyncio.gather(
        *(
            pipeline.faces(upload, policy, f"images[{index}]")
            for index, upload in enumerate(images)
        ),
        return_exceptions=True,
    )
    for index, (upload, photo) in enumerate(zip(images, photos, strict=True)):
        if isinstance(photo, FaceMarginError) and photo.http_status < 500:
            rejected.append(_rejection(index, upload, photo))
            statuses.append(photo.http_status)
        elif isinstance(photo, BaseException):
            raise photo
        else:
            accepted.append((index, upload, photo))
    embedded = await pipeline.embed([p.faces[0] for _, _, p in accepted])
    floor = quality_floor(runtime)
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
        else:
            earlier = {k[0]: t.embedding for k, t in zip(kept, templates, strict=True)}
            problem = await pipeline.run("search", duplicate, gallery, vector, earlier)
            if problem is None and runtime.settings.check_enroll_conflicts:
                problem = await pipeline.run(
                    "search", conflict, runtime, gallery, subject_id, vector
                )
        if problem is not None:
            rejected.append(_rejection(index, upload, problem))
            statuses.append(problem.http_status)
            continue
        templates.append(NewTemplate(embedding=vector, quality=quality, image_sha256=photo.sha256))
        kept.append((index, upload, photo, quality))
    if not templates:
        order = sorted(range(len(rejected)), key=lambda i: rejected[i].index)
        raise NothingEnrolled([rejected[i] for i in order], [statuses[i] for i in order])
    ids = await pipeline.run(
        "store",
        lambda: gallery.enroll(subject_id, templates, display_name=display_name, metadata=metadata),
    )
    subject = (await pipeline.run("store", gallery.get_subject, subject_id)).subject
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


# Cosine above which two embeddings are the same photo: the embedder is deterministic, so
# identical pixels give identical vectors up to float rounding (about 1e-7); two different
# shots of a person, or one photo re-encoded, stay far below (re-encoding alone gives 0.99x).
DUPLICATE_COSINE = 0.99999


def duplicate(
    gallery: Gallery, vector: np.ndarray, earlier: dict[int, np.ndarray]
) -> DuplicateTemplate | None:
    """The photo is already stored (as any subject), or sent twice in this request (`earlier`:
    the request's accepted photos so far, by their index)."""
    for index, other in earlier.items():
        if float(np.dot(vector, other)) >= DUPLICATE_COSINE:
            return DuplicateTemplate(
                "the same photo is already in this request", {"duplicate_of_request_image": index}
            )
    (found,) = gallery.identify(vector[None], top_k=1)
    if found and found[0].similarity >= DUPLICATE_COSINE:
        best = found[0]
        return DuplicateTemplate(
            f"this photo is already enrolled as template {best.template_id} of subject "
            f"{best.subject_id!r}",
            {"subject_id": best.subject_id, "template_id": best.template_id},
        )
    return None


def quality_floor(runtime: Runtime) -> float | None:
    """FACEMARGIN_MIN_ENROLL_QUALITY, else the floor the model's calibration suggests."""
    floor = runtime.settings.min_enroll_quality
    return runtime.contract.default_min_quality() if floor is None else floor


def conflict(
    runtime: Runtime, gallery: Gallery, subject_id: str, vector: np.ndarray
) -> FaceMarginError | None:
    """The face is closer to someone else than to the subject it is enrolled as (or, for a new
    subject, matches someone else at the default operating point)."""
    (candidates,) = gallery.identify(vector[None], top_k=2, rule=runtime.settings.score_rule)
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


def _rejection(index: int, upload: UploadFile, error: FaceMarginError) -> RejectedImage:
    return RejectedImage(
        index=index,
        filename=upload.filename,
        code=error.code,
        message=error.message,
        details=error.details,
    )
