"""Gather faces from concurrent requests into embedder batches.

A request's faces wait at most `max_wait_s` for company, and only while company can come:
`company_expected()` says whether any other request is still on its way to the embedder
(decoding or detecting). A lone request therefore never waits (on a 2-core CPU the fixed
2 ms window was 3 of the 4 ms a sequential `/embed` spent around its model work), while a
loaded server (a GPU above all) still runs full batches. A batch never exceeds `max_size`.
One worker runs the model, in a thread, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.vision.embedder import Embedder, Embeddings


@dataclass
class _Job:
    faces: np.ndarray
    done: asyncio.Future[Embeddings] = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        embedder: Embedder,
        max_size: int,
        max_wait_s: float,
        observe: Callable[[int, float], None] = lambda size, seconds: None,
        run_model: Callable[[Callable[[np.ndarray], Embeddings], np.ndarray], Awaitable[Embeddings]]
        | None = None,
        company_expected: Callable[[], bool] = lambda: True,
    ) -> None:
        """`run_model` runs the embedder off the event loop (the service passes its worker
        pool, so the wait for a thread is seen by admission control); default a thread of
        asyncio's own executor."""
        self.embedder = embedder
        self.run_model = run_model or asyncio.to_thread
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.observe = observe  # (batch size, seconds) for metrics
        self.company_expected = company_expected
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def embed(self, faces: np.ndarray) -> Embeddings:
        if len(faces) == 0:
            return self.embedder.embed(faces)
        job = _Job(faces, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.done

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].faces)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_size:
            remaining = deadline - time.monotonic()
            if self._queue.empty() and (remaining <= 0 or not self.company_expected()):
                break
            try:
                job = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (TimeoutError, asyncio.QueueEmpty):
                break
            jobs.append(job)
            size += len(job.faces)
        return jobs

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            live = [job for job in jobs if not job.done.cancelled()]
            if not live:
                continue
            faces = np.concatenate([job.faces for job in live])
            start = time.perf_counter()
            try:
                result = await self.run_model(self.embedder.embed, faces)
            except Exception as error:  # hand the failure to every waiting request
                for job in live:
                    if not job.done.done():
                        job.done.set_exception(error)
                continue
            self.observe(len(faces), time.perf_counter() - start)
            offset = 0
            for job in live:
                n = len(job.faces)
                if not job.done.done():
                    job.done.set_result(
                        Embeddings(
                            result.vectors[offset : offset + n], result.norms[offset : offset + n]
                        )
                    )
                offset += n
