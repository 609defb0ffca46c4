"""How a request names its broker session: ``Authorization: Bearer <token>`` (mobile,
native, desktop), a bare ``Authorization: <token>`` (the AWS SDKs' container-credentials
provider), or the session cookie (the SPA; see ``service.security`` for its Origin rule)."""

from __future__ import annotations

from flask import g, request
from werkzeug.wrappers import Response

from identity.config.document import BrokerConfig
from identity.config.models import COOKIE_PREFIXES
from identity.errors import InvalidRequest, Unauthenticated
from service.runtime import runtime
from service.security import require_allowed_origin

_MAX_TOKEN = 256


def bearer_token() -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when there is none."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN or " " in token:
        raise Unauthenticated("send Authorization: Bearer <broker session token>")
    return token


def container_token() -> str:
    """The token of the container-credentials format: ``Authorization: <token>``, as the
    AWS SDKs send ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (no scheme)."""
    header = request.headers.get("Authorization", "")
    if not header or " " in header or len(header) > _MAX_TOKEN:
        raise Unauthenticated("send Authorization: <broker session token>, without a scheme")
    return header


def cookie_secure(config: BrokerConfig) -> bool:
    """Session cookies are ``Secure`` except in the plain-http demo."""
    return not (config.is_demo and config.service.public_url.startswith("http://"))


def session_cookie() -> str | None:
    """The session cookie's value, or None. Two cookies of that name are refused
    (``invalid_request``): one may have been planted for a parent domain, and which one a
    browser sends first is not the broker's to guess."""
    values = request.cookies.getlist(runtime().config.service.cookie_name)
    if len(values) > 1:
        raise InvalidRequest("the request carries more than one broker session cookie")
    value = values[0] if values else None
    return value if value and len(value) <= _MAX_TOKEN else None


def pre_login_cookie_name_for(config: BrokerConfig) -> str:
    """``__Host-{session cookie name}_login``, the session cookie's own prefix left out."""
    name = config.service.cookie_name
    for prefix in COOKIE_PREFIXES:
        name = name.removeprefix(prefix)
    return f"__Host-{name}_login"


def session_token() -> str:
    """The session of a request that may come from the SPA or from a bearer client:
    ``Authorization: Bearer`` when present, else the session cookie, which needs an
    allowed ``Origin`` (``origin_not_allowed`` otherwise)."""
    token = bearer_token()
    if token is not None:
        return token
    cookie = session_cookie()
    if cookie is None:
        raise Unauthenticated("no broker session")
    require_allowed_origin()
    g.session_from_cookie = True
    return cookie


def set_session_cookie(response: Response, token: str, expires_at: float) -> None:
    """Put a new session in the cookie: HttpOnly, SameSite=Lax, Secure (outside the
    plain-http demo), for the rest of the session's life."""
    config = runtime().config
    response.set_cookie(
        config.service.cookie_name,
        token,
        expires=int(expires_at),
        path="/",
        secure=cookie_secure(config),
        httponly=True,
        samesite="Lax",
    )


def clear_session_cookie(response: Response) -> None:
    config = runtime().config
    response.delete_cookie(
        config.service.cookie_name,
        path="/",
        secure=cookie_secure(config),
        httponly=True,
        samesite="Lax",
    )


def forget_ended_session_cookie(response: Response) -> Response:
    """After a cookie-authenticated request found no session (401), drop the cookie."""
    if g.get("session_from_cookie") and response.status_code == 401:
        clear_session_cookie(response)
    return response
