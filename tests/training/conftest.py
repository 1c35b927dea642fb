"""Fixtures for training tests (aligned faces come from tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch single-threaded for a module of small-tensor tests: on shared two-core machines a
    second intra-op thread mostly waits for a busy core (it made test_backbones 3x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
