"""Everything a request needs, built once at startup: detector, embedder, batcher, gallery,
security and metrics. Routes reach it through `get_runtime`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from service.api.metrics import Metrics
from service.api.pipeline import FacePipeline
from service.api.security import KeyChecker, RateLimiter, parse_keys
from service.api.settings import Settings
from service.gallery import Gallery, GalleryError
from service.vision.contract import ModelContract
from service.vision.embedder import Embedder, choose_providers
from service.vision.errors import FaceMarginError, NotReady, Overloaded
from service.vision.preprocess import build_detector

log = logging.getLogger("facemargin")
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    pipeline: FacePipeline
    metrics: Metrics
    keys: KeyChecker
    limiter: RateLimiter
    gallery: Gallery | None = None
    gallery_error: FaceMarginError | None = None
    in_flight: int = field(default=0)
    reopen: asyncio.Task[None] | None = None

    @property
    def contract(self) -> ModelContract:
        return self.pipeline.contract

    def require_gallery(self) -> Gallery:
        if self.gallery is None:
            raise self.gallery_error or NotReady("the gallery is not open")
        return self.gallery

    def shed(self) -> Overloaded | None:
        """The refusal new work gets now, counted as shed, or None. Full means too many requests in
        flight, or work recently waiting longer than `max_queue_delay_ms` for a thread (the
        first request in flight is always admitted, so the server cannot lock itself out)."""
        waited = self.pipeline.queue_delay.current()
        if self.in_flight >= self.settings.max_in_flight or (
            self.in_flight > 0 and waited * 1000 > self.settings.max_queue_delay_ms
        ):
            self.metrics.shed.inc()
            # The work in flight now drains in about the time work has been waiting.
            return Overloaded(
                f"server busy ({self.in_flight} requests in progress, work waiting "
                f"{waited * 1000:.0f} ms for a thread); retry shortly",
                {"in_flight": self.in_flight, "queue_delay_ms": round(waited * 1000, 1)},
                retry_after=waited,
            )
        return None

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """A slot of work, or 503 overloaded at once: a full server answers fast instead of
        queueing requests until their clients give up."""
        refusal = self.shed()
        if refusal is not None:
            raise refusal
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    def refresh_gallery_metrics(self) -> None:
        if self.gallery is not None:
            stats = self.gallery.stats()
            self.metrics.gallery_subjects.set(stats.subjects)
            self.metrics.gallery_templates.set(stats.templates)


def _below_the_event_loop() -> None:
    """Run this worker thread at a lower CPU priority than the event loop. The loop accepts
    connections and answers refusals; when the workers' detection and embedding took the
    cores on equal terms, a server offered 4x its capacity took tens of seconds to refuse
    (bench/load.py: refusal p99 22 s at 64/s on 2 cores; 0.14 s with this). Linux nice
    values are per thread; elsewhere this would renice the whole process, so it is skipped."""
    if sys.platform == "linux":
        # Relative: a server already started under nice may only go lower.
        os.setpriority(os.PRIO_PROCESS, 0, min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19))


def open_gallery(
    settings: Settings, contract: ModelContract
) -> tuple[Gallery | None, FaceMarginError | None]:
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        gallery = Gallery.open(
            settings.gallery_url,
            model_id=contract.model_id,
            embedding_dim=contract.embedding_dim,
            index_kind=settings.index_kind,
            use_gpu=settings.provider.value != "cpu",
            hnsw_ef_search=settings.hnsw_ef_search,
            snapshot_dir=settings.data_dir / "index" if settings.index_snapshot else None,
            snapshot_every=settings.index_snapshot_every,
        )
    except GalleryError as error:  # model_mismatch: the gallery was filled by another model
        return None, error
    except Exception as error:  # the database driver's own errors: unreachable, refused
        log.exception("cannot open the gallery at %s", _redacted(settings.gallery_url))
        return None, NotReady(f"gallery store unreachable: {type(error).__name__}")
    gallery.start_sync(settings.sync_interval_s)
    return gallery, None


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def start_runtime(settings: Settings) -> Runtime:
    import faiss

    faiss.omp_set_num_threads(settings.faiss_threads)
    keys = KeyChecker(parse_keys(settings.api_keys))
    metrics = Metrics()
    pool = ThreadPoolExecutor(
        settings.workers_threads,
        thread_name_prefix="facemargin",
        initializer=_below_the_event_loop,
    )
    loop = asyncio.get_running_loop()
    detector = await loop.run_in_executor(pool, build_detector, settings.detector_config())
    embedder = await loop.run_in_executor(
        pool,
        lambda: Embedder(
            settings.model_path,
            threads=settings.onnx_threads or None,
            providers=choose_providers(settings.provider.value),
            batch_size=settings.batch_max_size,
        ),
    )

    pipeline = FacePipeline(settings, detector, embedder, metrics, pool)
    pipeline.start()
    gallery, gallery_error = await loop.run_in_executor(
        pool, open_gallery, settings, embedder.contract
    )
    if gallery_error is not None:
        log.error("gallery unavailable: %s", gallery_error.message)
    metrics.runtime.info(
        {
            "model_id": embedder.contract.model_id,
            "provider": embedder.providers[0],
            "detector": settings.detector.value,
            "index": settings.index_kind.value,
        }
    )
    runtime = Runtime(
        settings=settings,
        pipeline=pipeline,
        metrics=metrics,
        keys=keys,
        limiter=RateLimiter(settings.rate_limit_per_minute),
        gallery=gallery,
        gallery_error=gallery_error,
    )
    runtime.refresh_gallery_metrics()
    log.info(
        "facemargin ready to serve: data %s, store %s, model %s (%s, %d-d), detector %s, "
        "device %s, API keys %s",
        settings.data_dir.resolve(),
        _redacted(settings.gallery_url),
        embedder.contract.model_id,
        embedder.contract.backbone,
        embedder.contract.embedding_dim,
        settings.detector.value,
        embedder.providers[0],
        "on" if keys.enabled else "off (every request is served)",
    )
    if isinstance(gallery_error, NotReady):
        runtime.reopen = asyncio.get_running_loop().create_task(_reopen_gallery(runtime))
    return runtime


async def _reopen_gallery(runtime: Runtime, every_s: float = 2.0) -> None:
    """Keep trying a store that was unreachable at start (a database still booting); /ready
    stays 503 meanwhile. A model mismatch is final and is not retried."""
    while runtime.gallery is None and isinstance(runtime.gallery_error, NotReady):
        await asyncio.sleep(every_s)
        gallery, error = await asyncio.get_running_loop().run_in_executor(
            runtime.pipeline.pool, open_gallery, runtime.settings, runtime.contract
        )
        runtime.gallery, runtime.gallery_error = gallery, error
    if runtime.gallery is not None:
        log.info("gallery open after a retry")
        runtime.refresh_gallery_metrics()


async def stop_runtime(runtime: Runtime) -> None:
    if runtime.reopen is not None:
        runtime.reopen.cancel()
    await runtime.pipeline.stop()
    if runtime.gallery is not None:
        runtime.gallery.stop_sync()
        runtime.gallery.close()
    runtime.pipeline.pool.shutdown(wait=False, cancel_futures=True)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime
