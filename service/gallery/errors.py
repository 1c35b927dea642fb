"""The gallery's expected failures, each with its stable error code."""

from __future__ import annotations

from service.vision.errors import FaceMarginError


class GalleryError(FaceMarginError):
    """Base of the gallery's expected failures."""

    code = "gallery_error"


class SubjectNotFound(GalleryError):
    code = "subject_not_found"
    http_status = 404

    def __init__(self, subject_id: str) -> None:
        super().__init__(f"no subject {subject_id!r} in the gallery")
        self.subject_id = subject_id


class TemplateNotFound(GalleryError):
    code = "template_not_found"
    http_status = 404

    def __init__(self, subject_id: str, template_id: int) -> None:
        super().__init__(f"subject {subject_id!r} has no template {template_id}")
        self.subject_id = subject_id
        self.template_id = template_id


class ModelMismatch(GalleryError):
    """The gallery holds embeddings of another model: they are not comparable with this one's."""

    code = "model_mismatch"
    http_status = 409

    def __init__(
        self,
        bound_model_id: str,
        model_id: str,
        bound_dim: int | None = None,
        dim: int | None = None,
    ) -> None:
        detail = f" ({bound_dim}-d against {dim}-d)" if bound_dim != dim else ""
        super().__init__(
            f"the gallery is bound to model {bound_model_id!r}, not {model_id!r}{detail}; "
            "open another database, or re-enroll everyone with the new model"
        )
        self.bound_model_id = bound_model_id
        self.model_id = model_id
