"""Request hygiene that every route shares: request ids, trusted proxies, the body cap,
security headers (HSTS when ``service.public_url`` is https), CORS and the Origin rule for
cookie-authenticated requests.

CORS answers only the exact origins of ``service.allowed_origins``, with credentials, and
never reflects anything else (``null`` included). A request authenticated by the session
cookie must come from one of those origins (``require_allowed_origin``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from identity.config.document import BrokerConfig
from identity.errors import OriginNotAllowed
from service.logs import request_id_var

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-site",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}

# One year; no includeSubDomains: the broker's own host is all it may speak for (a sibling
# host, or one that still serves plain http, is not the broker's to decide).
HSTS = "max-age=31536000"

# The demo page needs its own script and styles, and talks to its own origin.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self' http: https:; frame-ancestors 'none'; "
    "base-uri 'none'"
)


CORS_METHODS = "GET, POST"
CORS_HEADERS = "Authorization, Content-Type, X-Request-Id"
CORS_EXPOSED = "X-Request-Id, Retry-After"
CORS_MAX_AGE = "600"
_CORS_PREFIX = "/v1/"


@dataclass(frozen=True)
class OriginPolicy:
    """``allowed`` origins, exactly as listed; ``own`` is the broker's origin (from
    ``service.public_url``), which a same-origin browser request stands for."""

    allowed: frozenset[str]
    own: str

    @classmethod
    def from_config(cls, config: BrokerConfig) -> OriginPolicy:
        parts = urlsplit(config.service.public_url)
        return cls(
            allowed=frozenset(config.service.allowed_origins),
            own=f"{parts.scheme}://{parts.netloc}".lower(),
        )


def _policy() -> OriginPolicy:
    policy: OriginPolicy = current_app.extensions["chime_broker_origins"]
    return policy


def request_origin() -> str | None:
    """The origin the browser says the request comes from.

    Browsers leave ``Origin`` out of same-origin GETs; ``Sec-Fetch-Site: same-origin``
    (which scripts cannot set) then stands for the broker's own origin.
    """
    origin = request.headers.get("Origin")
    if origin is None and request.headers.get("Sec-Fetch-Site") == "same-origin":
        return _policy().own
    return origin


def require_allowed_origin() -> None:
    """Refuse (``origin_not_allowed``) a request whose origin is not listed in
    ``service.allowed_origins``: the rule for every request the session cookie
    authenticates."""
    origin = request_origin()
    if origin is None or origin not in _policy().allowed:
        raise OriginNotAllowed(
            "this origin may not use the broker session cookie",
            log_detail=f"origin {origin[:100]!r}" if origin else "no Origin header",
        )


def init_app(app: Flask, config: BrokerConfig) -> None:
    app.extensions["chime_broker_origins"] = OriginPolicy.from_config(config)
    strict_transport = config.service.public_url.startswith("https://")
    hops = config.service.trusted_proxies
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=0
        )
    app.config["MAX_CONTENT_LENGTH"] = config.service.max_body

    @app.before_request
    def assign_request_id() -> None:
        incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        context = g._get_current_object()
        context.request_id = request_id
        context.request_id_token = request_id_var.set(request_id)

    @app.before_request
    def cors_preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        if not request.path.startswith(_CORS_PREFIX):
            return None
        origin = request.headers.get("Origin")
        if origin is None or origin not in _policy().allowed:
            raise OriginNotAllowed(
                "this origin may not call the broker",
                log_detail=f"preflight from {origin[:100]!r}" if origin else "preflight",
            )
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        return response

    # The headers every answer carries unless its view set its own, as (lower-case name,
    # name, value): one pass over the answer's headers instead of a lookup per header.
    defaults = [
        (name.lower(), name, value)
        for name, value in [*SECURITY_HEADERS.items(), ("Cache-Control", "no-store")]
    ]
    allowed = frozenset(config.service.allowed_origins)

    @app.after_request
    def harden(response: Response) -> Response:
        headers = response.headers
        present = {name.lower() for name, _ in headers.items()}
        for lower, name, value in defaults:
            if lower not in present:
                headers.add(name, value)
        if strict_transport:
            headers["Strict-Transport-Security"] = HSTS
        environ = request.environ
        if environ.get("PATH_INFO", "").startswith(_CORS_PREFIX):
            if "vary" in present:
                response.vary.add("Origin")
            else:
                headers.add("Vary", "Origin")
            origin = environ.get("HTTP_ORIGIN")
            if origin is not None and origin in allowed:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Allow-Credentials"] = "true"
                headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        request_id = getattr(g._get_current_object(), "request_id", None)
        if request_id:
            headers["X-Request-Id"] = request_id
        return response

    @app.teardown_request
    def forget_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def client_address() -> str:
    """The client's address, as far as ``service.trusted_proxies`` lets us believe it."""
    return request.remote_addr or "unknown"
