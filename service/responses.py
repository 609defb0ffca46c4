"""The credentials body every flow returns (DESIGN §3)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from identity.config.document import BrokerConfig
from identity.models import Grant
from identity.times import rfc3339


def credentials_body(grant: Grant) -> dict[str, Any]:
    creds = grant.credentials
    body: dict[str, Any] = {
        "provider": grant.provider,
        "user_id": grant.user.user_id,
        "display_name": grant.user.display_name,
        "app_instance_arn": grant.app_instance_arn,
        "app_instance_user_arn": grant.app_instance_user_arn,
        "region": grant.region,
        "identity_id": creds.identity_id,
        "credentials": {
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "session_token": creds.session_token,
            "expiration": rfc3339(creds.expiration),
        },
    }
    if grant.messaging_session_endpoint is not None:
        body["messaging_session_endpoint"] = grant.messaging_session_endpoint
    if grant.session_token is not None and grant.session_expires_at is not None:
        body["broker_session"] = {
            "token": grant.session_token,
            "expires_at": rfc3339(grant.session_expires_at),
        }
    return body


def credentials_account(config: BrokerConfig, grant: Grant) -> str:
    """The AWS account the credentials act in: that of the role vended into, else that of
    the app instance."""
    provider = config.provider(grant.provider)
    role_arn = config.role_arn(provider) if provider is not None else None
    # arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE
    return (role_arn or grant.app_instance_arn).split(":")[4]


def credentials_response(grant: Grant, status: int = 200) -> Response:
    response = jsonify(credentials_body(grant))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response
