"""Fixtures shared by the service tests."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """Small searches on a shared two-core machine: a second OpenMP thread only waits."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)
