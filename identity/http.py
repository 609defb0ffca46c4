"""Outbound HTTP to identity providers (discovery, JWKS, token, userinfo, token inspection,
SAML metadata): sessions that keep no cookies, bodies read with a cap, and one retry policy.

The retry policy: a connection that could not be made is tried once more at once (nothing
was sent, so this is safe for a single-use code too); nothing is retried once a request was
sent, so one call takes at most two connect timeouts and one read timeout
(``aws.timeouts``). Callers answer 503/504 themselves, and the JWKS cache serves its last
keys through an outage. Every call is timed and counted per operation
(``identity.telemetry``); one that gets no answer, or a 5xx, is logged at warning with the
operation and the host (never the URL's query, which may hold a token).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from identity import telemetry
from identity.errors import BrokerError, UpstreamTimeout, UpstreamUnavailable

SessionT = TypeVar("SessionT", bound=requests.Session)

log = logging.getLogger("chime_broker.idp")

# Only a connection that was never made is retried: once, at once. ``read=False`` lets a
# read timeout leave as itself (a 504), not as an exhausted retry (a 503).
IDP_RETRY: Final = Retry(
    total=1,
    connect=1,
    read=False,
    status=0,
    other=0,
    redirect=0,
    raise_on_redirect=False,
    raise_on_status=False,
    backoff_factor=0,
)
# The operations counted in metrics; a discovery document's URL counts as ``discovery``.
IDP_OPERATIONS: Final = ("discovery", "jwks", "token", "userinfo", "inspection", "saml_metadata")
_DISCOVERY_SUFFIXES: Final = (
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
)


def upstream_session(*, pool_maxsize: int, operation: str) -> requests.Session:
    """A session for one upstream ``operation`` (one of ``IDP_OPERATIONS``): the retry
    policy above, and no cookie jar (one user's cookie must never ride along with
    another's)."""
    return as_upstream(requests.Session(), pool_maxsize=pool_maxsize, operation=operation)


def as_upstream(session: SessionT, *, pool_maxsize: int, operation: str) -> SessionT:
    """``session`` set up like every ``upstream_session``; for a library's own session
    class (Authlib's ``OAuth2Session`` at the token endpoint, ``operation="token"``)."""
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = ObservedAdapter(operation, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class ObservedAdapter(HTTPAdapter):
    """Applies ``IDP_RETRY`` and counts every call as ``operation``."""

    def __init__(self, operation: str, *, pool_maxsize: int) -> None:
        super().__init__(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=IDP_RETRY)
        self.operation = operation

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        url = request.url or ""
        discovery = urlsplit(url).path.endswith(_DISCOVERY_SUFFIXES)
        operation = "discovery" if discovery else self.operation
        started = time.monotonic()
        with _counted_call(operation, url):
            response = super().send(request, *args, **kwargs)
        _count_answer(operation, url, response.status_code, time.monotonic() - started)
        return response


@contextmanager
def _counted_call(operation: str, url: str) -> Iterator[None]:
    """Count a call to an identity provider made in the block that gets no answer (a
    ``requests`` error), and log it at warning."""
    started = time.monotonic()
    try:
        yield
    except requests.RequestException as error:
        seconds = time.monotonic() - started
        log.warning(
            "identity provider call got no answer: %s %s",
            operation,
            type(error).__name__,
            extra={"fields": _fields(operation, url, seconds, type(error).__name__)},
        )
        label = (
            telemetry.NO_ANSWER_TIMEOUT
            if isinstance(error, requests.Timeout)
            else telemetry.NO_ANSWER_CONNECTION
        )
        telemetry.current().upstream_call("idp", operation, seconds, label)
        raise


def _count_answer(operation: str, url: str, status: int, seconds: float) -> None:
    """Count a call to an identity provider that was answered; a 5xx is logged at warning."""
    error = None if status < 400 else "http_5xx" if status >= 500 else "http_4xx"
    if error == "http_5xx":
        fields = {**_fields(operation, url, seconds, error), "http_status": status}
        log.warning(
            "identity provider call failed: %s HTTP %s",
            operation,
            status,
            extra={"fields": fields},
        )
    telemetry.current().upstream_call("idp", operation, seconds, error)


def _fields(operation: str, url: str, seconds: float, error: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "operation": operation,
        # Host and port only: a netloc may carry user:password@.
        "host": f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname,
        "error_code": error,
        "seconds": round(seconds, 3),
    }


@dataclass(frozen=True)
class CappedAnswer:
    """An identity provider's answer to a GET: its status, its Content-Type, and the body of
    a 200 (empty for any other status; None when over the cap)."""

    status: int
    content_type: str
    body: bytes | None


def get_capped(
    session: requests.Session,
    url: str,
    *,
    headers: Mapping[str, str],
    timeouts: tuple[float, float],
    limit: int,
    upstream: str,
    where: str,
) -> CappedAnswer:
    """GET ``url`` without following redirects, reading at most ``limit`` bytes of a 200's
    body; no answer raises ``no_answer(upstream=..., where=...)`` without its cause (the
    cause's text may hold the URL)."""
    try:
        with session.get(
            url, timeout=timeouts, stream=True, allow_redirects=False, headers=dict(headers)
        ) as response:
            status = response.status_code
            content_type = response.headers.get("Content-Type", "")
            body = read_capped(response, limit) if status == 200 else b""
    except requests.RequestException as e:
        raise no_answer(e, upstream=upstream, where=where) from None
    return CappedAnswer(status, content_type, body)


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, or None when it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def read_capped(response: requests.Response, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def no_answer(error: requests.RequestException, *, upstream: str, where: str) -> BrokerError:
    """The broker's error for a call to an identity provider that got no answer: a timeout is
    504 ``upstream_timeout``, anything else 503 ``upstream_unavailable``. ``upstream`` names
    it for the client; ``where`` (operation and URL) goes to the log only."""
    if isinstance(error, requests.Timeout):
        return UpstreamTimeout(
            f"{upstream} did not answer in time", log_detail=f"{where} timed out"
        )
    return UpstreamUnavailable(
        f"{upstream} is unreachable", log_detail=f"{where} unreachable: {type(error).__name__}"
    )
