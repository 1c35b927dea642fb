"""Settings for the torch-free preprocessing and the service, read from FACEMARGIN_* variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.gallery.index import IndexKind
from service.gallery.ranking import MatchRule
from service.vision.faces import PhotoLimits
from service.vision.imaging import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from service.vision.preprocess import MODELS_DIR, DetectorConfig, DetectorKind


class Provider(StrEnum):
    cpu = "cpu"
    cuda = "cuda"  # required: the service refuses to start without a usable GPU
    auto = "auto"  # CUDA when onnxruntime-gpu sees a GPU, CPU otherwise; /info says which


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEMARGIN_", extra="ignore")

    max_image_bytes: int = Field(
        default=MAX_IMAGE_BYTES, gt=0, description="Largest encoded image accepted, in bytes."
    )
    max_body_bytes: int = Field(
        default=50 * 1024 * 1024,
        gt=0,
        description="Largest request body, enforced while it streams in.",
    )
    body_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="A request body must arrive within this many seconds plus its length at "
        "min_body_bytes_per_s; slower, it is refused with 408 and the connection closed.",
    )
    min_body_bytes_per_s: float = Field(
        default=50_000.0,
        gt=0,
        description="The slowest upload rate served (bytes/s) past body_grace_s.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must deliver a request's headers within this many seconds "
        "of opening (or of its previous response); slower, it is closed. Applies under "
        "`facemargin serve`.",
    )
    max_image_pixels: int = Field(
        default=MAX_IMAGE_PIXELS,
        gt=0,
        description="Largest width*height accepted, checked from the header before decoding.",
    )
    detector: DetectorKind = Field(
        default=DetectorKind.yunet,
        description="Face detector family: yunet (default; OpenCV Zoo's YuNet, MIT), mtcnn, or "
        "scrfd (bring your own file).",
    )
    detector_path: Path = Field(
        default=MODELS_DIR,
        description="YuNet: the .onnx file, or a folder holding yunet.onnx. MTCNN: folder with "
        "mtcnn_{pnet,rnet,onet}.onnx. SCRFD: the .onnx file.",
    )
    min_face_size: int = Field(
        default=20, ge=8, description="Smallest face side, in pixels, the detector searches for."
    )
    detection_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="YuNet/SCRFD score threshold; default the detector's own (YuNet 0.6, "
        "chosen on CFP; SCRFD 0.5). MTCNN uses its own three.",
    )
    detection_fallback_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="YuNet: when no face reaches detection_threshold, use faces down to this "
        "score (the same network run, decoded lower). Default 0.3: on CFP it halves the "
        "profile photos without a face at no cost on frontal ones (models/README.md).",
    )
    onnx_threads: int = Field(
        default=0, ge=0, description="Intra-op threads per ONNX Runtime session; 0 lets it choose."
    )
    min_face_px: int = Field(
        default=32,
        ge=1,
        description="Smallest face (short side of its box, px) verify/enroll/identify will use.",
    )
    model_path: Path = Field(
        default=MODELS_DIR / "face-reidentification-retail-0095.onnx",
        description="Embedding model: an ONNX file with a facemargin contract. Shipped: "
        "face-reidentification-retail-0095.onnx (default; Intel OMZ, Apache-2.0), its bf16 "
        "variant face-reidentification-retail-0095-bf16.onnx (OpenVINO, CPUs with native "
        "bfloat16: about 2.5x faster embedding) and embedder.onnx (facemargin's own "
        "MobileFaceNet).",
    )
    provider: Provider = Field(default=Provider.cpu, description="cpu, cuda (required) or auto.")
    data_dir: Path = Field(
        default=Path("data"), description="Where the default SQLite gallery lives."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the gallery store; default sqlite:///DATA_DIR/gallery.db. "
        "postgresql+psycopg://user:password@host/db for several replicas.",
    )
    index_kind: IndexKind = Field(
        default=IndexKind.exact,
        description="exact (inner product, any size up to ~10^6) or hnsw (approximate).",
    )
    hnsw_ef_search: int = Field(
        default=128,
        ge=1,
        le=65_536,
        description="hnsw only: search breadth. Raise it for recall on large galleries "
        "(bench/gallery_scale.py: recall@1 and latency against it at 10^4 to 10^6).",
    )
    index_snapshot: bool = Field(
        default=True,
        description="hnsw only: keep the index graph in DATA_DIR/index (written after a "
        "rebuild, periodically and at shutdown) so a restart reads it back instead of building "
        "it again, minutes at 10^6 templates. The store stays the truth: a snapshot that does "
        "not match it is ignored.",
    )
    index_snapshot_every: int = Field(
        default=10_000,
        ge=1,
        description="hnsw with index_snapshot: write a fresh snapshot once the index is this "
        "many changes past the last one, so a killed replica replays at most about this many "
        "changes when it restarts.",
    )
    sync_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a replica applies the other replicas' writes (staleness bound).",
    )
    default_far: float = Field(
        default=1e-3,
        gt=0,
        lt=1,
        description="Verify's operating point when a request names none: the false-accept "
        "rate of one comparison.",
    )
    default_fpir: float | None = Field(
        default=1e-2,
        gt=0,
        lt=1,
        description="Identify's operating point when a request names none: the chance that a "
        "stranger is matched to someone, whatever the gallery's size (the per-comparison FAR "
        "is derived from it and the number of comparisons). Unset: default_far per "
        "comparison, whose false matches grow with the gallery.",
    )
    score_rule: MatchRule = Field(
        default=MatchRule.best,
        description="A subject's score over its templates: best template, or mean template.",
    )
    min_enroll_quality: float | None = Field(
        default=None,
        ge=0,
        description="Refuse enrolment faces whose embedding norm, relative to the calibration "
        "faces' median norm, is below this; default: the model's 1st percentile.",
    )
    check_enroll_conflicts: bool = Field(
        default=False,
        description="Refuse an enrolment face that is closer to another subject than to its own.",
    )
    batch_max_size: int = Field(default=32, ge=1, description="Faces per embedder batch.")
    batch_max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Longest a face waits for others to share its batch; it waits only while "
        "another request is still decoding or detecting.",
    )
    # 8 = twice the worker threads: enough to keep them busy, few enough that an admitted
    # request waits about one batch of work (bench/load.py: p99 0.76 s at 16/s offered on
    # 2 cores, against 3.0 s with 32).
    max_in_flight: int = Field(
        default=8,
        ge=1,
        description="Requests doing work at once; more are refused with 503 at once.",
    )
    max_queue_delay_ms: float = Field(
        default=500,
        gt=0,
        description="Refuse new work with 503 while recent work has waited longer than this "
        "for a worker thread (latency stays bounded past saturation).",
    )
    faiss_threads: int = Field(
        default=1,
        ge=1,
        description="OpenMP threads per FAISS search; requests already run in parallel, and "
        "on a busy small box a second thread mostly waits (3x slower searches measured).",
    )
    workers_threads: int = Field(default=4, ge=1, description="Threads for decoding and detection.")
    api_keys: str = Field(
        default="",
        description="Comma-separated NAME:SHA256 pairs (hex digest of the key); empty: no auth.",
    )
    public_docs: bool | None = Field(
        default=None,
        description="Serve /docs, /redoc and /openapi.json without a key. Default: yes when no "
        "API keys are configured; when keys are on they are off (404) unless this is true, "
        "since the document maps the whole attack surface.",
    )
    rate_limit_per_minute: int = Field(
        default=0, ge=0, description="Requests per minute per API key; 0: no limit."
    )
    max_top_k: int = Field(default=100, ge=1, description="Largest top_k an identify may ask.")
    max_images_per_enroll: int = Field(default=20, ge=1)

    @property
    def docs_served(self) -> bool:
        return self.public_docs if self.public_docs is not None else not self.api_keys.strip()

    @property
    def gallery_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gallery.db').resolve()}"

    def photo_limits(self) -> PhotoLimits:
        return PhotoLimits(self.max_image_bytes, self.max_image_pixels, self.min_face_px)

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            kind=self.detector,
            path=self.detector_path,
            min_face_size=self.min_face_size,
            threshold=self.detection_threshold,
            fallback_threshold=self.detection_fallback_threshold,
            threads=self.onnx_threads,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
