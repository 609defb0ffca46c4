"""Browser sign-in: the provider list the SPA draws its buttons from, the way out to the
identity provider (``GET /v1/login/{provider}``), the way back (``GET``/``POST
/v1/callback/{provider}``) and who is signed in (``GET /v1/session``).

Each login in flight lives in a pre-login cookie of its own (the sealed transaction, named
``{pre-login name}_{slot}``; see ``identity.login_transactions``), so a start writes nothing
to the store. ``SameSite=None; Secure`` because Apple's form_post and SAML's ACS come back as
cross-site POSTs, and ``__Host-`` so that no sibling site can plant one.
"""

from __future__ import annotations

import re
from typing import Final

from flask import Blueprint, Response, jsonify, redirect, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response as BaseResponse

from identity.errors import InvalidRequest
from identity.login_transactions import LOGIN_TTL, PreLoginCookie
from identity.logins import LoginStep
from identity.mapping import app_instance_user_arn
from identity.times import rfc3339
from service.endpoints import API, CALLBACK, LOGIN
from service.runtime import runtime
from service.sessions import (
    forget_ended_session_cookie,
    pre_login_cookie_name_for,
    session_cookie,
    session_token,
    set_session_cookie,
)

bp = Blueprint("login", __name__, url_prefix=API)
bp.after_app_request(forget_ended_session_cookie)

_PRE_LOGIN_SLOT: Final = re.compile(r"[A-Za-z0-9_-]{16}")
_MAX_PRE_LOGIN: Final = 4096
_LOGIN_PARAMS: Final = ("return_to", "code_challenge", "code_challenge_method")
_CALLBACK_PARAMS: Final = ("state", "code", "error", "iss")
_MAX_PARAM: Final = 4096


def pre_login_cookie_name() -> str:
    """``__Host-{service.cookie_name}_login`` (never prefixed twice)."""
    return pre_login_cookie_name_for(runtime().config)


def pre_login_cookies() -> dict[str, str]:
    """This browser's pre-login cookies, one per login in flight, by slot."""
    prefix = pre_login_cookie_name() + "_"
    found: dict[str, str] = {}
    for name, value in request.cookies.items():
        slot = name.removeprefix(prefix)
        if slot != name and _PRE_LOGIN_SLOT.fullmatch(slot) and len(value) <= _MAX_PRE_LOGIN:
            found[slot] = value
    return found


def _set_pre_login_cookies(response: BaseResponse, changes: tuple[PreLoginCookie, ...]) -> None:
    for change in changes:
        name = f"{pre_login_cookie_name()}_{change.slot}"
        if change.value is None:
            response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="None")
        else:
            response.set_cookie(
                name,
                change.value,
                max_age=LOGIN_TTL,
                path="/",
                secure=True,
                httponly=True,
                samesite="None",
            )


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
    # A cookie per login, so logins started at once in two tabs both finish.
    step = runtime().logins.begin(
        provider,
        in_flight=pre_login_cookies(),
        return_to=params.get("return_to"),
        code_challenge=params.get("code_challenge"),
        code_challenge_method=params.get("code_challenge_method"),
    )
    return login_step_response(step)


@bp.route(CALLBACK, methods=["GET", "POST"])
def callback(provider: str) -> BaseResponse:
    source = request.form if request.method == "POST" else request.args
    params = _single(source, _CALLBACK_PARAMS)
    step = runtime().logins.complete(
        provider,
        params,
        in_flight=pre_login_cookies(),
        previous_session=session_cookie(),
    )
    return login_step_response(step)


def login_step_response(step: LoginStep) -> BaseResponse:
    """Every step of a browser login: a 302 to where the step says, with the pre-login
    cookies it sets or removes, and the new session's cookie when it opened one (never for
    a native app's code handoff)."""
    response = redirect(step.redirect_to, 302)
    _set_pre_login_cookies(response, step.pre_login)
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
        expires_at=rfc3339(record.expires_at),
    )
