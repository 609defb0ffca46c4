"""The naive baseline: the credential-vending handler people write by hand, as a
Flask app, served by the same gunicorn settings as the broker.

Per request it fetches the IdP's JWKS, verifies the id token with PyJWT, builds a new
boto3 Cognito Identity client and calls GetId + GetCredentialsForIdentity (or, for the
developer provider, GetOpenIdTokenForDeveloperIdentity + GetCredentialsForIdentity; for
the STS provider, a new STS client and AssumeRole with the user's tag).
Nothing is cached and nothing is stored: ``POST /v1/credentials`` takes the id token
the client kept (``Authorization: Bearer <id_token>``) and does the same again.

Settings come from the environment (``create_app()`` is what gunicorn loads):
``BENCH_ISSUER``, ``BENCH_CLIENT_ID``, ``BENCH_JWKS_URL``, ``BENCH_POOL_ID``,
``BENCH_DEVELOPER_PROVIDER``, ``BENCH_STS_ROLE_ARN``, ``BENCH_APP_INSTANCE_ARN``,
``AWS_REGION``; the AWS SDK
reads ``AWS_ENDPOINT_URL`` and the keys itself.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import jwt
import requests
from botocore.exceptions import BotoCoreError, ClientError
from flask import Flask, Response, jsonify, request

__all__ = ["COGNITO_PROVIDER", "DEVELOPER_PROVIDER", "STS_PROVIDER", "create_app"]

COGNITO_PROVIDER = "bench"
DEVELOPER_PROVIDER = "benchdev"
STS_PROVIDER = "benchsts"
STS_DURATION = 3600
USER_TAG = "my_applications_user_id"


def _problem(status: int, code: str) -> tuple[Response, int]:
    return jsonify(code=code, status=status), status


def create_app() -> Flask:
    """The baseline app, configured from the environment."""
    issuer = os.environ["BENCH_ISSUER"]
    client_id = os.environ["BENCH_CLIENT_ID"]
    jwks_url = os.environ["BENCH_JWKS_URL"]
    pool_id = os.environ["BENCH_POOL_ID"]
    developer_provider = os.environ["BENCH_DEVELOPER_PROVIDER"]
    sts_role_arn = os.environ["BENCH_STS_ROLE_ARN"]
    app_instance_arn = os.environ["BENCH_APP_INSTANCE_ARN"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    login_key = issuer.split("://", 1)[-1].rstrip("/")
    app = Flask(__name__)

    def verify(id_token: str) -> dict[str, Any]:
        keys = requests.get(jwks_url, timeout=5).json()["keys"]
        kid = jwt.get_unverified_header(id_token).get("kid")
        jwk = next((k for k in keys if k.get("kid") == kid), None)
        if jwk is None:
            raise jwt.InvalidTokenError("unknown kid")
        claims: dict[str, Any] = jwt.decode(
            id_token,
            jwt.PyJWK(jwk).key,
            algorithms=["RS256"],
            audience=client_id,
            issuer=issuer,
        )
        return claims

    def assume_role(user_id: str) -> tuple[Response, int]:
        sts = boto3.client("sts", region_name=region)
        try:
            answer = sts.assume_role(
                RoleArn=sts_role_arn,
                RoleSessionName=user_id,
                Tags=[{"Key": USER_TAG, "Value": user_id}],
                DurationSeconds=STS_DURATION,
            )
        except (BotoCoreError, ClientError):
            return _problem(502, "upstream_error")
        return answer_with(STS_PROVIDER, user_id, None, answer["Credentials"], "SecretAccessKey")

    def answer_with(
        provider: str,
        user_id: str,
        identity_id: str | None,
        credentials: Any,
        secret_field: str,
    ) -> tuple[Response, int]:
        return jsonify(
            provider=provider,
            user_id=user_id,
            app_instance_arn=app_instance_arn,
            app_instance_user_arn=f"{app_instance_arn}/user/{user_id}",
            region=region,
            identity_id=identity_id,
            credentials={
                "access_key_id": credentials["AccessKeyId"],
                "secret_access_key": credentials[secret_field],
                "session_token": credentials["SessionToken"],
                "expiration": credentials["Expiration"].isoformat(),
            },
        ), 200

    def vend(provider: str, id_token: str) -> tuple[Response, int]:
        try:
            claims = verify(id_token)
        except (jwt.PyJWTError, KeyError, ValueError):
            return _problem(401, "invalid_token")
        if provider == STS_PROVIDER:
            return assume_role(f"sts-{claims['sub']}")
        cognito = boto3.client("cognito-identity", region_name=region)
        try:
            if provider == DEVELOPER_PROVIDER:
                user_id = f"dev-{claims['sub']}"
                opened = cognito.get_open_id_token_for_developer_identity(
                    IdentityPoolId=pool_id,
                    Logins={developer_provider: user_id},
                    PrincipalTags={USER_TAG: user_id},
                    TokenDuration=300,
                )
                identity_id = opened["IdentityId"]
                logins = {"cognito-identity.amazonaws.com": opened["Token"]}
            else:
                user_id = claims["sub"]
                logins = {login_key: id_token}
                identity_id = cognito.get_id(IdentityPoolId=pool_id, Logins=logins)["IdentityId"]
            answer = cognito.get_credentials_for_identity(IdentityId=identity_id, Logins=logins)
        except (BotoCoreError, ClientError):
            return _problem(502, "upstream_error")
        return answer_with(provider, user_id, identity_id, answer["Credentials"], "SecretKey")

    @app.post("/v1/token")
    def token() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            return _problem(400, "invalid_request")
        return vend(str(body.get("provider")), body["id_token"])

    @app.post("/v1/credentials")
    def credentials() -> tuple[Response, int]:
        scheme, _, id_token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not id_token:
            return _problem(401, "unauthenticated")
        return vend(COGNITO_PROVIDER, id_token)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app
