"""Fresh credentials for an existing session, in the broker's shape and in the AWS SDKs'
container-credentials shape; and logout."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from identity.times import rfc3339
from service.blueprints.saml import end_session_url as saml_end_session_url
from service.responses import credentials_account, credentials_response
from service.runtime import runtime
from service.sessions import clear_session_cookie, container_token, session_token

bp = Blueprint("credentials", __name__, url_prefix="/v1")


@bp.post("/credentials")
def refresh() -> Response:
    return credentials_response(runtime().broker.refresh(session_token()))


@bp.get("/credentials/container")
def container() -> Response:
    grant = runtime().broker.refresh(container_token())
    creds = grant.credentials
    response = jsonify(
        AccessKeyId=creds.access_key_id,
        SecretAccessKey=creds.secret_access_key,
        Token=creds.session_token,
        AccountId=credentials_account(runtime().config, grant),
        Expiration=rfc3339(creds.expiration),
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/logout")
def logout() -> Response:
    record = runtime().broker.end_session(session_token())
    response = jsonify(end_session_url=record.end_session_url or saml_end_session_url(record))
    if g.get("session_from_cookie"):
        clear_session_cookie(response)
    return response
