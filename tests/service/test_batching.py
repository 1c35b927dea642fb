"""Micro-batching with the real embedder: concurrent requests share batches, results are
exactly the unbatched ones, and a lone request waits no longer than the bound."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.api.batching import MicroBatcher
from service.vision.embedder import Embedder
from service.vision.preprocess import detect_and_align
from tests.conftest import MODELS, load_rgb, sample_photos


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(MODELS / "embedder.onnx", threads=1)


@pytest.fixture(scope="module")
def faces(mtcnn) -> np.ndarray:
    aligned = []
    for path in sample_photos(4)[:8]:
        found, _ = detect_and_align(load_rgb(path), mtcnn)
        aligned.append(found[0].pixels)
    return np.stack(aligned)


def test_concurrent_requests_share_batches_and_get_their_own_results(embedder, faces):
    sizes: list[int] = []

    async def scenario() -> list:
        batcher = MicroBatcher(
            embedder, max_size=32, max_wait_s=0.05, observe=lambda n, _: sizes.append(n)
        )
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.embed(faces[i : i + 1]) for i in range(len(faces)))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    alone = embedder.embed(faces)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.vectors[0], alone.vectors[i], atol=1e-5)
        np.testing.assert_allclose(result.norms[0], alone.norms[i], rtol=1e-5)
    assert sum(sizes) == len(faces) and max(sizes) > 1


def test_batches_never_exceed_the_cap(embedder, faces):
    sizes: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(
            embedder, max_size=3, max_wait_s=0.05, observe=lambda n, _: sizes.append(n)
        )
        batcher.start()
        try:
            await asyncio.gather(*(batcher.embed(faces[i : i + 1]) for i in range(len(faces))))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert max(sizes) <= 3 and sum(sizes) == len(faces)


def test_a_lone_request_is_not_held_for_company(embedder, faces):
    async def scenario() -> float:
        batcher = MicroBatcher(embedder, max_size=32, max_wait_s=0.02)
        batcher.start()
        try:
            await batcher.embed(faces[:1])  # warm-up
            start = time.perf_counter()
            await batcher.embed(faces[:1])
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    compute = min(_timed(lambda: embedder.embed(faces[:1])) for _ in range(3))
    assert asyncio.run(scenario()) < compute + 0.02 + 0.05  # the wait bound, plus scheduling


def test_no_wait_at_all_when_no_other_request_is_on_its_way(embedder, faces):
    """With nothing else decoding or detecting, a batch cannot gain company: even a long
    window is not waited out (the service passes `detecting > 0`)."""

    async def scenario(expected: bool) -> float:
        batcher = MicroBatcher(
            embedder, max_size=32, max_wait_s=0.5, company_expected=lambda: expected
        )
        batcher.start()
        try:
            await batcher.embed(faces[:1])
            start = time.perf_counter()
            await batcher.embed(faces[:1])
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    assert asyncio.run(scenario(expected=False)) < 0.2
    assert asyncio.run(scenario(expected=True)) >= 0.45  # company may come: the window holds


def test_a_request_still_detecting_joins_the_batch(embedder, faces):
    sizes: list[int] = []
    detecting = [1]

    async def scenario() -> None:
        batcher = MicroBatcher(
            embedder,
            max_size=32,
            max_wait_s=0.5,
            observe=lambda n, _: sizes.append(n),
            company_expected=lambda: detecting[0] > 0,
        )
        batcher.start()

        async def late() -> None:
            await asyncio.sleep(0.05)  # "detection" ends, then it embeds
            detecting[0] = 0
            await batcher.embed(faces[1:2])

        try:
            await asyncio.gather(batcher.embed(faces[:1]), late())
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [2]


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def test_the_pipeline_embeds_on_its_worker_pool_where_admission_control_sees_the_wait(
    embedder, faces
):
    """Embedding batches run on the pool the queue delay watches, not on asyncio's own
    executor: with the only worker busy, the embedding's wait for it is observed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service.api.metrics import Metrics
    from service.api.pipeline import FacePipeline
    from service.api.settings import Settings

    pool = ThreadPoolExecutor(1, thread_name_prefix="pipeline-test")
    threads: list[str] = []

    class Recording(Embedder):
        def embed(self, batch):  # type: ignore[override]
            threads.append(threading.current_thread().name)
            return embedder.embed(batch)

    recording = Recording.__new__(Recording)
    recording.__dict__.update(embedder.__dict__)
    pipeline = FacePipeline(Settings(batch_max_wait_ms=0), None, recording, Metrics(), pool)  # type: ignore[arg-type]

    async def scenario() -> float:
        pipeline.start()
        try:
            busy = asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.3)
            vectors = (await pipeline.batcher.embed(faces[:2])).vectors
            await busy
            assert vectors.shape[0] == 2
            return pipeline.queue_delay.current()
        finally:
            await pipeline.stop()

    waited = asyncio.run(scenario())
    pool.shutdown()
    assert threads and all(name.startswith("pipeline-test") for name in threads)
    assert waited > 0.2
