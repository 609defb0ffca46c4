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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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


class ResponseHeaders:
    """WSGI middleware: the headers every answer carries (the security headers and
    ``Cache-Control: no-store`` unless the view set its own, HSTS under https, ``Vary:
    Origin`` and CORS for the API's allowed origins, ``X-Request-Id``).

    They are added to the header list as it goes to the server: constants, checked once
    here, rather than added to each response object and checked again when it is sent.
    """

    def __init__(
        self, app: WSGIApplication, *, strict_transport: bool, allowed_origins: frozenset[str]
    ) -> None:
        self.app = app
        self.allowed_origins = allowed_origins
        # (lower-case name, header) of each default: one pass over the answer's headers
        self.defaults = [
            (name.lower(), (name, value))
            for name, value in [*SECURITY_HEADERS.items(), ("Cache-Control", "no-store")]
        ]
        self.strict_transport = strict_transport

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def start(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            return start_response(status, self.add(environ, headers), exc_info)

        return self.app(environ, start)

    def add(
        self, environ: WSGIEnvironment, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """``headers`` with every default header that is missing, and the per-request ones."""
        present = {name.lower() for name, _ in headers}
        headers.extend(header for lower, header in self.defaults if lower not in present)
        replaced: dict[str, tuple[str, str]] = {}
        if self.strict_transport:
            replaced["strict-transport-security"] = ("Strict-Transport-Security", HSTS)
        if environ.get("PATH_INFO", "").startswith(_CORS_PREFIX):
            if "vary" in present:
                headers = [_vary_origin(h) if h[0].lower() == "vary" else h for h in headers]
            else:
                headers.append(("Vary", "Origin"))
            origin = environ.get("HTTP_ORIGIN")
            if origin is not None and origin in self.allowed_origins:
                replaced["access-control-allow-origin"] = ("Access-Control-Allow-Origin", origin)
                replaced["access-control-allow-credentials"] = (
                    "Access-Control-Allow-Credentials",
                    "true",
                )
                replaced["access-control-expose-headers"] = (
                    "Access-Control-Expose-Headers",
                    CORS_EXPOSED,
                )
        request_id = request_id_var.get()
        if request_id:
            replaced["x-request-id"] = ("X-Request-Id", request_id)
        if replaced:
            if present & replaced.keys():
                headers = [h for h in headers if h[0].lower() not in replaced]
            headers.extend(replaced.values())
        return headers


def _vary_origin(header: tuple[str, str]) -> tuple[str, str]:
    """A ``Vary`` header that names ``Origin`` too."""
    name, value = header
    varies = [v.strip() for v in value.split(",") if v.strip()]
    if any(v.lower() == "origin" for v in varies):
        return header
    return name, ", ".join([*varies, "Origin"])


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

    app.wsgi_app = ResponseHeaders(  # type: ignore[method-assign]
        app.wsgi_app,
        strict_transport=strict_transport,
        allowed_origins=frozenset(config.service.allowed_origins),
    )

    @app.teardown_request
    def forget_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def client_address() -> str:
    """The client's address, as far as ``service.trusted_proxies`` lets us believe it."""
    return request.remote_addr or "unknown"
