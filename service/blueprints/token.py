"""The mobile and native exchange (``POST /v1/token``) and meeting guests (``POST /v1/guest``)."""

from __future__ import annotations

from flask import Blueprint, Response

from identity.errors import InvalidRequest
from service.bodies import GuestRequest, TokenRequest, parse_json_body
from service.responses import credentials_response
from service.runtime import runtime
from service.security import client_address

bp = Blueprint("token", __name__, url_prefix="/v1")


@bp.post("/token")
def exchange() -> Response:
    body = parse_json_body(TokenRequest)
    given = [f for f in ("id_token", "access_token", "code") if getattr(body, f) is not None]
    if len(given) != 1:
        raise InvalidRequest("send exactly one of id_token, access_token or code")
    if (body.code is None) != (body.code_verifier is None):
        raise InvalidRequest("code and code_verifier go together")
    if body.code is not None and body.code_verifier is not None:
        if body.nonce is not None:
            raise InvalidRequest("nonce goes with id_token")
        return credentials_response(
            runtime().logins.redeem_native_code(body.provider, body.code, body.code_verifier)
        )
    if body.nonce is not None and body.id_token is None:
        raise InvalidRequest("nonce goes with id_token")
    grant = runtime().broker.exchange_token(
        body.provider, id_token=body.id_token, access_token=body.access_token, nonce=body.nonce
    )
    return credentials_response(grant)


@bp.post("/guest")
def guest() -> Response:
    body = parse_json_body(GuestRequest)
    grant = runtime().broker.start_guest_session(
        body.provider,
        invite=body.invite,
        display_name=body.display_name,
        client_address=client_address(),
    )
    return credentials_response(grant)
