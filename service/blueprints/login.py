"""Browser sign-in: the provider list the SPA draws its buttons from, the way out to the
identity provider (``GET /v1/login/{provider}``), the way back (``GET``/``POST
/v1/callback/{provider}``) and who is signed in (``GET /v1/session``).

The login transaction is bound to the browser that began it by the pre-login cookie: a
random value only, ``SameSite=None; Secure`` because Apple's form_post and SAML's ACS come
back as cross-site POSTs, and ``__Host-`` so that no sibling site can plant one.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Final

from flask import Blueprint, Response, jsonify, redirect, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from identity.errors import InvalidRequest
from identity.logins import LOGIN_TTL, LoginStep
from identity.mapping import app_instance_user_arn
from service.endpoints import API, CALLBACK, LOGIN
from service.responses import rfc3339
from service.runtime import runtime
from service.sessions import (
    forget_ended_session_cookie,
    session_cookie,
    session_token,
    set_session_cookie,
)

bp = Blueprint("login", __name__, url_prefix=API)
bp.after_app_request(forget_ended_session_cookie)

_PRE_LOGIN_VALUE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_LOGIN_PARAMS: Final = ("return_to", "code_challenge", "code_challenge_method")
_CALLBACK_PARAMS: Final = ("state", "code", "error", "iss")
_MAX_PARAM: Final = 4096


def pre_login_cookie_name() -> str:
    """``__Host-{service.cookie_name}_login``."""
    return f"__Host-{runtime().config.service.cookie_name}_login"


def pre_login_value() -> str | None:
    """The random value of this browser's pre-login cookie, when it has a well-formed one."""
    value = request.cookies.get(pre_login_cookie_name())
    return value if value is not None and _PRE_LOGIN_VALUE.fullmatch(value) else None


def _single(source: MultiDict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The parameters ``names`` that are present, each at most once and bounded."""
    found: dict[str, str] = {}
    for name in names:
        values = source.getlist(name)
        if len(values) > 1:
            raise InvalidRequest(f"parameter {name!r} given more than once")
        if values:
            if len(values[0]) > _MAX_PARAM:
                raise InvalidRequest(f"parameter {name!r} is too long")
            found[name] = values[0]
    return found


@bp.get("/providers")
def providers() -> Response:
    """The providers a person can sign in with (meeting guests have no login page)."""
    rt = runtime()
    config = rt.config
    return jsonify(
        [
            {
                "name": p.name,
                "kind": p.kind,
                "display_name": p.display_name,
                "login_url": rt.endpoints.login_url(p.name),
            }
            for p in config.providers
            if p.kind != "guest"
        ]
    )


@bp.get(LOGIN)
def login(provider: str) -> BaseResponse:
    params = _single(request.args, _LOGIN_PARAMS)
    # A browser with a pre-login cookie keeps it, so logins in two tabs both succeed.
    pre_login = pre_login_value() or secrets.token_urlsafe(32)
    step = runtime().logins.begin(
        provider,
        pre_login=pre_login,
        return_to=params.get("return_to"),
        code_challenge=params.get("code_challenge"),
        code_challenge_method=params.get("code_challenge_method"),
    )
    response = redirect(step.redirect_to, 302)
    if step.error is None:
        response.set_cookie(
            pre_login_cookie_name(),
            pre_login,
            max_age=LOGIN_TTL,
            path="/",
            secure=True,
            httponly=True,
            samesite="None",
        )
    return response


@bp.route(CALLBACK, methods=["GET", "POST"])
def callback(provider: str) -> BaseResponse:
    source = request.form if request.method == "POST" else request.args
    params = _single(source, _CALLBACK_PARAMS)
    step = runtime().logins.complete(
        provider,
        params,
        pre_login=pre_login_value(),
        previous_session=session_cookie(),
    )
    return login_step_response(step)


def login_step_response(step: LoginStep) -> BaseResponse:
    """How every browser login ends: a 302 to where the step says, with the new session's
    cookie when it opened one (never for a native app's code handoff)."""
    response = redirect(step.redirect_to, 302)
    if step.session_token is not None and step.session_expires_at is not None:
        set_session_cookie(response, step.session_token, step.session_expires_at)
    return response


@bp.get("/session")
def session() -> Response:
    rt = runtime()
    record = rt.broker.describe_session(session_token())
    return jsonify(
        provider=record.provider,
        user_id=record.user_id,
        display_name=record.display_name,
        app_instance_user_arn=app_instance_user_arn(
            rt.config.chime.app_instance_arn, record.user_id
        ),
        expires_at=rfc3339(datetime.fromtimestamp(record.expires_at, UTC)),
    )
