"""Every onnxruntime session the service builds runs without per-shape memory plans: its
inputs change shape with each photo (detectors) or batch (embedder), and the plans only grow
(bench/memory.py measured about 35 MB after a hundred requests)."""

from __future__ import annotations

import pytest

from service.api.settings import Settings
from service.vision.embedder import Embedder, choose_providers
from service.vision.preprocess import build_detector


def _sessions(obj) -> list:
    found = []
    for value in vars(obj).values():
        if hasattr(value, "get_session_options"):
            found.append(value)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("service."):
            found.extend(_sessions(value))
    return found


@pytest.mark.parametrize("detector", ["yunet", "mtcnn"])
def test_detector_sessions_keep_no_memory_plans(detector: str) -> None:
    settings = Settings(detector=detector)
    sessions = _sessions(build_detector(settings.detector_config()))
    assert sessions, "found the detector's onnxruntime sessions"
    assert all(not s.get_session_options().enable_mem_pattern for s in sessions)


def test_embedder_session_keeps_no_memory_plans() -> None:
    settings = Settings()
    embedder = Embedder(settings.model_path, providers=choose_providers("cpu"))
    sessions = _sessions(embedder)
    assert sessions and all(not s.get_session_options().enable_mem_pattern for s in sessions)
