"""Request hygiene that every route shares: request ids, trusted proxies, the body cap and
security headers."""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from identity.config import BrokerConfig
from service.logs import request_id_var

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-site",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}

# The demo page needs its own script and styles, and talks to its own origin.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self' http: https:; frame-ancestors 'none'; "
    "base-uri 'none'"
)


def init_app(app: Flask, config: BrokerConfig) -> None:
    hops = config.service.trusted_proxies
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=0
        )
    app.config["MAX_CONTENT_LENGTH"] = config.service.max_body

    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_id = request_id
        g.request_id_token = request_id_var.set(request_id)

    @app.after_request
    def harden(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        if g.get("request_id"):
            response.headers["X-Request-Id"] = g.request_id
        return response

    @app.teardown_request
    def forget_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)


def client_address() -> str:
    """The client's address, as far as ``service.trusted_proxies`` lets us believe it."""
    return request.remote_addr or "unknown"
