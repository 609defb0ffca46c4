"""The one mapping from failures to ``application/problem+json`` responses (for a person's
browser on a sign-in route, to the page of ``service.pages``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

from identity import errors
from service import pages

log = logging.getLogger("chime_broker.errors")

# Seconds between two warnings about a failing state store; requests in between are counted.
STORE_FAULT_LOG_INTERVAL = 30.0

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES: dict[int, type[errors.BrokerError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthenticated,
    403: errors.AccessDenied,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    429: errors.RateLimited,
}


def problem_body(error: errors.BrokerError) -> dict[str, Any]:
    """The RFC 9457 body for ``error``; 500s say nothing but the request id."""
    detail = error.detail if error.status != 500 else "see the request id in the broker's log"
    return {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "detail": detail,
        "code": error.code,
        "request_id": g.get("request_id"),
    }


# The AWS SDKs' container-credentials clients read ``Code`` and ``Message`` of an error.
_CONTAINER_ROUTE = "credentials.container"


def problem_response(error: errors.BrokerError) -> Response:
    """The problem document; a page instead for a person's browser on a sign-in route
    (``service.pages``)."""
    g.problem_code = error.code
    body = problem_body(error)
    if pages.wants_page():
        response = pages.problem_page(error, body["detail"])
    else:
        rule = request.url_rule
        if rule is not None and rule.endpoint == _CONTAINER_ROUTE:
            body["Code"] = error.code
            body["Message"] = body["detail"]
        response = Response(json.dumps(body), status=error.status, mimetype=PROBLEM_JSON)
    if request.url_rule is not None and request.url_rule.endpoint in pages.SIGN_IN_ROUTES:
        response.vary.add("Accept")
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="chime-broker"'

    response.headers["Cache-Control"] = "no-store"
    return response


def _log(error: errors.BrokerError) -> None:
    fields = {"code": error.code, "status": error.status}
    if error.log_detail:
        fields["reason"] = error.log_detail
    level = logging.WARNING if error.status >= 500 else logging.INFO
    log.log(level, "request refused: %s", error.detail, extra={"fields": fields})


class StoreFaultLog:
    """Warns that the state store fails at most once per ``interval`` seconds, without a
    traceback, with the number of failures since the previous warning."""

    def __init__(
        self, clock: Callable[[], float], interval: float = STORE_FAULT_LOG_INTERVAL
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._quiet_until: float | None = None
        self._unlogged = 0

    def record(self, error: errors.StoreError) -> None:
        with self._lock:
            now = self._clock()
            if self._quiet_until is not None and now < self._quiet_until:
                self._unlogged += 1
                return
            self._quiet_until = now + self._interval
            unlogged, self._unlogged = self._unlogged, 0
        fields = {
            "code": errors.StoreUnavailable.code,
            "status": errors.StoreUnavailable.status,
            "reason": str(error),
            "failures_not_logged": unlogged,
        }
        log.warning("state store unavailable", extra={"fields": fields})


def init_app(app: Flask, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Every error, the broker's and Flask's own, leaves as a problem document.

    ``clock`` paces the warnings about a failing state store."""
    store_faults = StoreFaultLog(clock)

    @app.errorhandler(errors.StoreError)
    def store_error(error: errors.StoreError) -> Response:
        store_faults.record(error)
        return problem_response(errors.StoreUnavailable())

    @app.errorhandler(errors.BrokerError)
    def broker_error(error: errors.BrokerError) -> Response:
        _log(error)
        return problem_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        cls = _HTTP_CODES.get(status, errors.InternalError)
        detail = {
            404: "no such resource",
            405: "method not allowed on this resource",
            413: "request body too large",
            415: "unsupported content type",
        }.get(status, error.description if status < 500 else None)
        broker_error = cls(detail)
        if cls is errors.InternalError:
            broker_error.status = status if status >= 400 else 500
        _log(broker_error)
        response = problem_response(broker_error)
        if status == 405:
            allowed = error.get_response().headers.get("Allow")
            if allowed:
                response.headers["Allow"] = allowed
        return response

    @app.errorhandler(Exception)
    def unhandled(error: Exception) -> Response:
        log.error("unhandled %s", type(error).__name__, exc_info=error)
        return problem_response(errors.InternalError())
