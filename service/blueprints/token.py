"""The mobile and native exchange: ``POST /v1/token``."""

from __future__ import annotations

from flask import Blueprint, Response

from identity.errors import InvalidRequest
from service.bodies import TokenRequest, parse_json_body
from service.responses import credentials_response
from service.runtime import runtime

bp = Blueprint("token", __name__, url_prefix="/v1")


@bp.post("/token")
def exchange() -> Response:
    body = parse_json_body(TokenRequest)
    given = [f for f in ("id_token", "access_token", "code") if getattr(body, f) is not None]
    if len(given) != 1:
        raise InvalidRequest("send exactly one of id_token, access_token or code")
    if body.code is not None or body.code_verifier is not None:
        raise InvalidRequest("code exchange needs a native-app login (code and code_verifier)")
    if body.nonce is not None and body.id_token is None:
        raise InvalidRequest("nonce goes with id_token")
    grant = runtime().broker.exchange_token(
        body.provider, id_token=body.id_token, access_token=body.access_token, nonce=body.nonce
    )
    return credentials_response(grant)
