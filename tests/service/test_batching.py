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


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start
