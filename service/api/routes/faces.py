"""POST /verify, /embed and /detect."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.api.deps import RuntimeDep
from service.api.routes.common import (
    authorize,
    cosine,
    describe,
    multipart_body,
    no_unknown_fields,
    operating_point,
    used_face,
)
from service.api.schemas import (
    DetectResponse,
    EmbeddedFace,
    EmbedResponse,
    ImageInfo,
    VerifyResponse,
)
from service.vision.detection import FacePolicy
from service.vision.errors import InvalidRequest
from service.vision.faces import on_photo

router = APIRouter(tags=["faces"], dependencies=[Depends(authorize), Depends(no_unknown_fields)])
Photo = Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP photo.")]
ThresholdForm = Annotated[
    float | None,
    Form(ge=-1.0, le=1.0, description="Explicit cosine threshold; overrides far."),
]
FarForm = Annotated[
    float | None,
    Form(gt=0.0, lt=1.0, description="Operating point: a FAR the model was calibrated at."),
]


@router.post("/verify", response_model=VerifyResponse, dependencies=[Depends(multipart_body)])
async def verify(
    image1: Photo,
    image2: Photo,
    runtime: RuntimeDep,
    face_policy: Annotated[
        FacePolicy, Form(description="Which face when a photo has several; 'all' is not allowed.")
    ] = FacePolicy.largest,
    threshold: ThresholdForm = None,
    far: FarForm = None,
) -> VerifyResponse:
    """Are the faces in two photos the same person? Cosine similarity against a threshold
    calibrated at a named false-accept rate (default FACEMARGIN_DEFAULT_FAR), or yours."""
    if face_policy is FacePolicy.all:
        raise InvalidRequest(
            "face_policy=all is not allowed on /verify: it compares one face per photo",
            {"field": "face_policy"},
        )
    point = operating_point(runtime, threshold, far)
    policy = face_policy
    async with runtime.admitted():
        pipeline = runtime.pipeline
        first, second = await asyncio.gather(
            pipeline.faces(image1, policy, "image1"), pipeline.faces(image2, policy, "image2")
        )
        a, b = first.faces[0], second.faces[0]
        embedded = await pipeline.embed([a, b])
    similarity = cosine(embedded.vectors[0], embedded.vectors[1])
    return VerifyResponse(
        similarity=round(similarity, 6),
        match=similarity >= point.threshold,
        threshold=point,
        faces=[
            used_face(a, embedded.norms[0], first, runtime),
            used_face(b, embedded.norms[1], second, runtime),
        ],
        model_id=runtime.contract.model_id,
    )


@router.post("/embed", response_model=EmbedResponse, dependencies=[Depends(multipart_body)])
async def embed(
    image: Photo,
    runtime: RuntimeDep,
    face_policy: Annotated[FacePolicy, Form()] = FacePolicy.all,
) -> EmbedResponse:
    """Embeddings of the faces in a photo, for clients that search on their own. Compare
    them only with embeddings from the same model_id."""
    async with runtime.admitted():
        photo = await runtime.pipeline.faces(image, face_policy, "image")
        embedded = await runtime.pipeline.embed(photo.faces)
    return EmbedResponse(
        faces=[
            EmbeddedFace(
                face=used_face(face, norm, photo, runtime),
                embedding=vector.tolist(),
                norm=float(norm),
            )
            for face, vector, norm in zip(
                photo.faces, embedded.vectors, embedded.norms, strict=True
            )
        ],
        model_id=runtime.contract.model_id,
        embedding_dim=runtime.contract.embedding_dim,
    )


@router.post("/detect", response_model=DetectResponse, dependencies=[Depends(multipart_body)])
async def detect(image: Photo, runtime: RuntimeDep) -> DetectResponse:
    """Every face in the photo with its box, five landmarks and detector score."""
    async with runtime.admitted():
        decoded, faces = await runtime.pipeline.detect(image, "image")
    # A large JPEG is decoded at reduced scale; report the photo as sent.
    width, height = decoded.size
    return DetectResponse(
        image=ImageInfo(
            width=width, height=height, format=decoded.format, exif_orientation=decoded.orientation
        ),
        faces=[describe(on_photo(face, decoded.scale)) for face in faces],
    )
