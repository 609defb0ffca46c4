"""Prometheus metrics: HTTP requests by route, and what the broker did for them (vends,
upstream calls, cache lookups, sessions, refused logins).

Each app has its own registry (tests build many apps in one process); the app binds it as
the request's ``identity.telemetry`` for the length of each request. Under gunicorn with
several workers ``PROMETHEUS_MULTIPROC_DIR`` is set and the exposition merges every
worker's files. Every label takes values from a closed set, so no request can grow the
exposition: an unknown method counts as ``other``, an unknown route as ``<unmatched>``.

``METRICS`` declares every series once; the README's table is ``metrics_table()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from identity import errors, telemetry
from identity.http import IDP_OPERATIONS

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

UNMATCHED_ROUTE: Final = "<unmatched>"
OTHER: Final = "other"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ORIGINS: Final = frozenset({"browser", "native", "token", "guest"})
VEND_OUTCOMES: Final = ("vended", "reused")
# Requests that sign someone in: a problem answer here is a refused login.
LOGIN_ENDPOINTS: Final = frozenset(
    {"login.login", "login.callback", "saml.acs", "token.exchange", "token.guest"}
)


def _error_codes() -> frozenset[str]:
    def walk(cls: type[errors.BrokerError]) -> Iterator[str]:
        yield cls.code
        for sub in cls.__subclasses__():
            yield from walk(sub)

    return frozenset(walk(errors.BrokerError))


ERROR_CODES: Final = _error_codes()


@dataclass(frozen=True)
class MetricSpec:
    """One series: its name, kind, labels and meaning."""

    name: str
    kind: Literal["counter", "histogram"]
    labels: tuple[str, ...]
    help: str


REQUESTS = MetricSpec(
    "chime_broker_requests_total",
    "counter",
    ("route", "method", "status"),
    "HTTP requests answered, by route (`<unmatched>` for no route), method (`other` for an "
    "unknown one) and status.",
)
REQUEST_DURATION = MetricSpec(
    "chime_broker_request_duration_seconds",
    "histogram",
    ("route", "method"),
    "Time to answer an HTTP request, by route and method.",
)
VENDS = MetricSpec(
    "chime_broker_vends_total",
    "counter",
    ("provider", "exchange", "outcome"),
    "Credentials asked for, by provider and exchange mode; outcome `vended` (from AWS), "
    "`reused` (the credential cache) or the error code that refused them.",
)
UPSTREAM_DURATION = MetricSpec(
    "chime_broker_upstream_duration_seconds",
    "histogram",
    ("upstream", "operation"),
    "Time of one call to AWS (`aws`, retries included) or an identity provider (`idp`), by "
    "operation (`GetId`, `AssumeRole`, … ; `discovery`, `jwks`, `token`, `userinfo`, "
    "`inspection`, `saml_metadata`).",
)
UPSTREAM_ERRORS = MetricSpec(
    "chime_broker_upstream_errors_total",
    "counter",
    ("upstream", "operation", "code"),
    "Upstream calls that failed, by operation and code: the AWS error code (`other` outside "
    "a known set), `http_4xx`/`http_5xx` (identity providers), `timeout` or `connection`.",
)
CACHE_LOOKUPS = MetricSpec(
    "chime_broker_cache_lookups_total",
    "counter",
    ("cache", "result"),
    "Lookups in the credential cache (`credentials`) and the Cognito identity-id cache "
    "(`identity_id`), by result (`hit`, `miss`).",
)
SESSIONS_STARTED = MetricSpec(
    "chime_broker_sessions_started_total",
    "counter",
    ("origin",),
    "Broker sessions started, by origin (`browser`, `native`, `token`, `guest`).",
)
SESSIONS_ENDED = MetricSpec(
    "chime_broker_sessions_ended_total",
    "counter",
    ("origin",),
    "Broker sessions ended by a logout, a refused re-check or a revocation, by origin.",
)
LOGINS_REFUSED = MetricSpec(
    "chime_broker_logins_refused_total",
    "counter",
    ("code",),
    "Sign-ins refused (browser, native, token exchange, guest), by problem code.",
)

METRICS: Final = (
    REQUESTS,
    REQUEST_DURATION,
    VENDS,
    UPSTREAM_DURATION,
    UPSTREAM_ERRORS,
    CACHE_LOOKUPS,
    SESSIONS_STARTED,
    SESSIONS_ENDED,
    LOGINS_REFUSED,
)


def metrics_table() -> str:
    """The README's table of every series, made from ``METRICS``."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
    return "\n".join(rows) + "\n"


def _bounded(value: str, allowed: Collection[str]) -> str:
    return value if value in allowed else OTHER


class RequestMetrics:
    """Every series of ``METRICS`` in the app's registry; the app's ``Telemetry``."""

    def __init__(self, providers: Collection[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.providers = frozenset(providers)
        self.requests = self._counter(REQUESTS)
        self.latency = self._histogram(REQUEST_DURATION, BUCKETS)
        self.vends = self._counter(VENDS)
        self.upstream_latency = self._histogram(UPSTREAM_DURATION, UPSTREAM_BUCKETS)
        self.upstream_errors = self._counter(UPSTREAM_ERRORS)
        self.cache_lookups = self._counter(CACHE_LOOKUPS)
        self.sessions_started = self._counter(SESSIONS_STARTED)
        self.sessions_ended = self._counter(SESSIONS_ENDED)
        self.logins_refused = self._counter(LOGINS_REFUSED)
        # Each labelled child, once found: ``labels()`` builds and checks its key on every
        # call, and the label values come from closed sets.
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per worker."""
        key = (metric, *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def _counter(self, spec: MetricSpec) -> Counter:
        return Counter(spec.name, spec.help, spec.labels, registry=self.registry)

    def _histogram(self, spec: MetricSpec, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(spec.name, spec.help, spec.labels, buckets=buckets, registry=self.registry)

    # -- identity.telemetry.Telemetry ------------------------------------------------------

    def upstream_call(
        self, upstream: telemetry.Upstream, operation: str, seconds: float, error: str | None
    ) -> None:
        if upstream == "idp":
            operation = _bounded(operation, IDP_OPERATIONS)
        self.child(self.upstream_latency, upstream, operation).observe(seconds)
        if error is not None:
            self.child(self.upstream_errors, upstream, operation, error).inc()

    def vend(self, provider: str, exchange: str, outcome: str) -> None:
        outcome = outcome if outcome in VEND_OUTCOMES else _bounded(outcome, ERROR_CODES)
        self.child(self.vends, _bounded(provider, self.providers), exchange, outcome).inc()

    def cache_lookup(self, cache: telemetry.Cache, hit: bool) -> None:
        self.child(self.cache_lookups, cache, "hit" if hit else "miss").inc()

    def session_started(self, origin: str) -> None:
        self.child(self.sessions_started, _bounded(origin, ORIGINS)).inc()

    def session_ended(self, origin: str) -> None:
        self.child(self.sessions_ended, _bounded(origin, ORIGINS)).inc()

    def login_refused(self, code: str) -> None:
        self.child(self.logins_refused, _bounded(code, ERROR_CODES)).inc()

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
        else:
            body = generate_latest(self.registry)
        # The whole header as given: ``mimetype=`` would append a second charset.
        return Response(body, content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask, *, providers: Collection[str] = ()) -> RequestMetrics:
    metrics = RequestMetrics(providers)

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()
        g.telemetry_token = telemetry.bind(metrics)

    @app.after_request
    def observe(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        context = g._get_current_object()
        started = getattr(context, "request_started", None)
        rule = req.url_rule
        route = rule.rule if rule else UNMATCHED_ROUTE
        method = req.method if req.method in METHODS else OTHER
        metrics.child(metrics.requests, route, method, str(response.status_code)).inc()
        if started is not None:
            metrics.child(metrics.latency, route, method).observe(time.perf_counter() - started)
        code = getattr(context, "problem_code", None)
        if code is not None and req.endpoint in LOGIN_ENDPOINTS:
            metrics.login_refused(code)
        return response

    @app.teardown_request
    def unbind_telemetry(_exc: BaseException | None) -> None:
        token = g.pop("telemetry_token", None)
        if token is not None:
            telemetry.unbind(token)

    return metrics
