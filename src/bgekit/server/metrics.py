"""Prometheus metrics of one server instance (its own registry, so apps do not share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bgekit.server.batcher import BatchStats

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bgekit_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "bgekit_request_seconds", "request latency", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.in_flight = Gauge("bgekit_requests_in_flight", "requests being served", registry=r)
        self.queue_depth = Gauge("bgekit_queue_depth", "jobs waiting for the model", ["model"], registry=r)
        self.batch_inputs = Histogram(
            "bgekit_batch_inputs", "inputs per model run", ["model"], buckets=_SIZES, registry=r
        )
        self.batch_seconds = Histogram(
            "bgekit_batch_seconds", "model run time", ["model"], buckets=_LATENCY, registry=r
        )
        self.tokens = Counter("bgekit_tokens", "input tokens run through a model", ["model"], registry=r)

    def batch_observer(self, model: str) -> Callable[[BatchStats], None]:
        def observe(stats: BatchStats) -> None:
            self.batch_inputs.labels(model).observe(stats.inputs)
            self.batch_seconds.labels(model).observe(stats.seconds)
            self.tokens.labels(model).inc(stats.tokens)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
