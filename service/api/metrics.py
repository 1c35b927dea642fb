"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facemargin_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facemargin_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "facemargin_stage_seconds",
            "Time per pipeline stage: decode+detect+align, embed, search.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "facemargin_embed_batch_size",
            "Faces per embedder batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "facemargin_in_flight", "Requests doing work now.", registry=self.registry
        )
        self.shed = Counter(
            "facemargin_shed",
            "Requests refused because the server was full.",
            registry=self.registry,
        )
        self.gallery_subjects = Gauge(
            "facemargin_gallery_subjects", "Enrolled subjects.", registry=self.registry
        )
        self.gallery_templates = Gauge(
            "facemargin_gallery_templates", "Stored templates.", registry=self.registry
        )
        self.runtime = Info(
            "facemargin_runtime", "Model and execution provider.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
