"""POST /verify, /embed and /detect."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.routes.common import (
    authorize,
    cosine,
    describe,
    faces_of,
    multipart_body,
    operating_point,
    read_upload,
    used_face,
)
from service.runtime import Runtime, get_runtime
from service.schemas import (
    DetectResponse,
    EmbeddedFace,
    EmbedResponse,
    ImageInfo,
    VerifyResponse,
)
from service.vision.faces import Policy, on_photo, stack
from service.vision.imaging import decode_image

router = APIRouter(tags=["faces"], dependencies=[Depends(authorize)])
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
    runtime: Annotated[Runtime, Depends(get_runtime)],
    face_policy: Annotated[
        Policy, Form(description="Which face when a photo has several; 'all' is not allowed.")
    ] = Policy.largest,
    threshold: ThresholdForm = None,
    far: FarForm = None,
) -> VerifyResponse:
    """Are the faces in two photos the same person? Cosine similarity against a threshold
    calibrated at a named false-accept rate (default FACEMARGIN_DEFAULT_FAR), or yours."""
    point = operating_point(runtime, threshold, far)
    policy = Policy.largest if face_policy is Policy.all else face_policy
    async with runtime.admitted():
        first, second = await asyncio.gather(
            faces_of(image1, runtime, policy, "image1"), faces_of(image2, runtime, policy, "image2")
        )
        a, b = first.faces[0], second.faces[0]
        embedded = await runtime.batcher.embed(stack([a, b], runtime.template))
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
    runtime: Annotated[Runtime, Depends(get_runtime)],
    face_policy: Annotated[Policy, Form()] = Policy.all,
) -> EmbedResponse:
    """Embeddings of the faces in a photo, for clients that search on their own. Compare
    them only with embeddings from the same model_id."""
    async with runtime.admitted():
        photo = await faces_of(image, runtime, face_policy, "image")
        embedded = await runtime.batcher.embed(stack(photo.faces, runtime.template))
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
async def detect(image: Photo, runtime: Annotated[Runtime, Depends(get_runtime)]) -> DetectResponse:
    """Every face in the photo with its box, five landmarks and detector score."""
    settings = runtime.settings
    async with runtime.admitted():
        data = await read_upload(image, runtime)

        def work() -> DetectResponse:
            decoded = decode_image(
                data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
            faces = runtime.detector.detect(decoded.pixels)
            # A large JPEG is decoded at reduced scale; report the photo as sent.
            width, height = decoded.size
            return DetectResponse(
                image=ImageInfo(
                    width=width,
                    height=height,
                    format=decoded.format,
                    exif_orientation=decoded.orientation,
                ),
                faces=[describe(on_photo(face, decoded.scale)) for face in faces],
            )

        return await runtime.run("detect", work)
