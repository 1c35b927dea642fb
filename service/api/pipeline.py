"""The face pipeline a request runs: upload bytes to faces, faces to embeddings. It owns the
limits (upload and decode caps, the smallest face), the worker pool every stage runs on (the
embedder's batches too, so admission control sees time spent waiting to embed), the
micro-batcher and the stage metrics, so routes only say what they want."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import UploadFile

from service.api.batching import MicroBatcher
from service.api.metrics import Metrics
from service.api.settings import Settings
from service.vision.alignment import Template
from service.vision.contract import ModelContract
from service.vision.detection import Detector, Face, FacePolicy
from service.vision.embedder import Embedder, Embeddings
from service.vision.errors import FaceMarginError, ImageTooLarge
from service.vision.faces import PhotoFaces, read_faces, stack
from service.vision.imaging import DecodedImage, decode_image
from service.vision.preprocess import AlignedFace

T = TypeVar("T")


class QueueDelay:
    """How long work has recently waited for a worker thread: an exponentially weighted mean
    of the waits, forgotten when no work has started for `memory_s`.

    This is what admission control watches (as CoDel watches a packet queue's sojourn time):
    a count of requests in flight cannot tell a cheap request from an expensive one or a
    quiet machine from a busy one, but the time work waits says directly how late new
    arrivals would be served."""

    def __init__(self, weight: float = 0.2, memory_s: float = 1.0) -> None:
        self.weight = weight
        self.memory_s = memory_s
        self._mean = 0.0
        self._last = -math.inf

    def observe(self, wait_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        stale = now - self._last > self.memory_s
        self._mean = wait_s if stale else self._mean + self.weight * (wait_s - self._mean)
        self._last = now

    def current(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return self._mean if now - self._last <= self.memory_s else 0.0


class FacePipeline:
    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        embedder: Embedder,
        metrics: Metrics,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.settings, self.detector, self.embedder = settings, detector, embedder
        self.metrics, self.pool = metrics, pool
        self.queue_delay = QueueDelay()
        self.limits = settings.photo_limits()
        # Requests between upload and embedder: while none is, a batch has no one to wait for.
        self.detecting = 0

        def observe(size: int, seconds: float) -> None:
            metrics.batch_size.observe(size)
            metrics.stage.labels("embed").observe(seconds)

        self.batcher = MicroBatcher(
            embedder,
            settings.batch_max_size,
            settings.batch_max_wait_ms / 1e3,
            observe,
            run_model=lambda model, faces: self.run(None, model, faces),
            company_expected=lambda: self.detecting > 0,
        )

    @property
    def contract(self) -> ModelContract:
        return self.embedder.contract

    @property
    def template(self) -> Template:
        """The alignment the served model was trained on."""
        return self.embedder.template

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def run(self, stage: str | None, function: Callable[..., T], *args: Any) -> T:
        """CPU or I/O work in the worker pool, timed as a pipeline stage when named; the wait
        for a thread feeds the queue delay admission control watches."""
        start = time.perf_counter()

        def started() -> T:
            self.queue_delay.observe(time.perf_counter() - start)
            return function(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, started)
        finally:
            if stage is not None:
                self.metrics.stage.labels(stage).observe(time.perf_counter() - start)

    async def read(self, upload: UploadFile, what: str) -> bytes:
        """The whole upload, refusing (413) as soon as it passes the image cap."""
        cap = self.settings.max_image_bytes
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise ImageTooLarge(
                f"{upload.filename or 'image'} is over {cap} bytes", {"max_bytes": cap}
            ).about(what)
        return data

    async def faces(self, upload: UploadFile, policy: FacePolicy, what: str) -> PhotoFaces:
        """The photo's faces chosen by `policy`, aligned to the served model's template;
        `what` names the upload in errors (image1, images[2])."""
        self.detecting += 1
        try:
            data = await self.read(upload, what)
            photo = await self.run(
                None,  # read_faces times decode and detect itself
                read_faces,
                data,
                self.detector,
                self.template,
                policy,
                self.limits,
                what,
            )
        finally:
            self.detecting -= 1
        self.metrics.stage.labels("decode").observe(photo.decode_s)
        self.metrics.stage.labels("detect").observe(photo.detect_s)
        return photo

    async def detect(self, upload: UploadFile, what: str) -> tuple[DecodedImage, list[Face]]:
        """Every face the detector finds, unselected and unaligned."""
        data = await self.read(upload, what)

        def work() -> tuple[DecodedImage, list[Face]]:
            try:
                decoded = decode_image(
                    data,
                    max_bytes=self.settings.max_image_bytes,
                    max_pixels=self.settings.max_image_pixels,
                )
            except FaceMarginError as error:
                raise error.about(what) from None
            return decoded, self.detector.detect(decoded.pixels)

        return await self.run("detect", work)

    async def embed(self, faces: Sequence[AlignedFace]) -> Embeddings:
        """The faces' embeddings, batched with other requests'."""
        return await self.batcher.embed(stack(list(faces), self.template))
