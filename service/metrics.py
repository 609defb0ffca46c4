"""Prometheus request metrics by route and status.

Each app has its own registry (tests build many apps in one process). Under gunicorn with
several workers ``PROMETHEUS_MULTIPROC_DIR`` is set and the exposition merges every
worker's files.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class RequestMetrics:
    """Counters and latency histograms for every request the app answers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "chime_broker_requests_total",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chime_broker_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
        else:
            body = generate_latest(self.registry)
        return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> RequestMetrics:
    metrics = RequestMetrics()

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        started = g.get("request_started")
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if started is not None:
            metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    return metrics
