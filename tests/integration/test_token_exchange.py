"""POST /v1/token end to end: a real local OIDC provider, local Facebook and Amazon fakes,
and the moto server whose recorder shows exactly what the broker sent to Cognito."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from tests.fakes import AMAZON_CLIENT_ID, FACEBOOK_APP_ID, FACEBOOK_APP_SECRET
from tests.fixtures.apps import MakeApp

CLIENT_ID = "mobile-app"
# AWS that stops answering fails a test in seconds, not after botocore's minute.
AWS_TIMEOUTS = {"connect": 2, "read": 5}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ClientFor = Callable[[list[dict[str, Any]]], FlaskClient]


@pytest.fixture
def client_for(make_app: MakeApp) -> ClientFor:
    """``client_for(providers)``: a test client of a broker with exactly ``providers``."""

    def client(providers: list[dict[str, Any]]) -> FlaskClient:
        return make_app(providers=providers, aws__timeouts=AWS_TIMEOUTS).test_client()

    return client


@pytest.fixture
def provider_entries(
    oidc_provider: Any, facebook_api: Any, amazon_api: Any
) -> dict[str, dict[str, Any]]:
    """One config entry per provider kind, every endpoint pointed at a local part."""
    oidc_provider.register_client(CLIENT_ID)
    issuer = oidc_provider.issuer
    jwks = oidc_provider.url("/jwks")
    return {
        "oidc": {
            "name": "corp",
            "kind": "oidc",
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "exchange": "cognito",
        },
        "google": {
            "name": "google",
            "kind": "google",
            "client_ids": [CLIENT_ID, "web-app"],
            "issuer": issuer,
            "jwks_url": jwks,
            "exchange": "cognito",
        },
        "apple": {
            "name": "apple",
            "kind": "apple",
            "client_ids": [CLIENT_ID],
            "issuer": issuer,
            "jwks_url": jwks,
            "exchange": "cognito",
        },
        "cognito_user_pool": {
            "name": "pool",
            "kind": "cognito_user_pool",
            "user_pool_id": "us-east-1_TestPool",
            "client_ids": [CLIENT_ID],
            "issuer": issuer,
            "jwks_url": jwks,
            "exchange": "cognito",
        },
        "facebook": {
            "name": "facebook",
            "kind": "facebook",
            "app_id": FACEBOOK_APP_ID,
            "app_secret": FACEBOOK_APP_SECRET,
            "debug_token_url": facebook_api.debug_token_url,
            "userinfo_url": facebook_api.userinfo_url,
            "exchange": "cognito",
        },
        "amazon": {
            "name": "amazon",
            "kind": "amazon",
            "client_ids": [AMAZON_CLIENT_ID],
            "tokeninfo_url": amazon_api.tokeninfo_url,
            "userinfo_url": amazon_api.userinfo_url,
            "exchange": "cognito",
        },
    }


LOGIN_KEYS = {
    "google": "accounts.google.com",
    "apple": "appleid.apple.com",
    "cognito_user_pool": "cognito-idp.us-east-1.amazonaws.com/us-east-1_TestPool",
    "facebook": "graph.facebook.com",
    "amazon": "www.amazon.com",
}


def upstream_token(
    kind: str, sub: str, oidc_provider: Any, facebook_api: Any, amazon_api: Any
) -> tuple[str, str]:
    """(field, token) a mobile app of ``kind`` would send for user ``sub``."""
    if kind in ("facebook", "amazon"):
        token = f"{kind}-access-token-for-{sub}"
        api = facebook_api if kind == "facebook" else amazon_api
        api.add_token(token, user_id=sub, profile={"name": "Ada Lovelace"})
        return "access_token", token
    claims: dict[str, Any] = {"sub": sub, "name": "Ada Lovelace", "email": "ada@example.com"}
    if kind == "cognito_user_pool":
        claims["token_use"] = "id"
    if kind == "apple":
        claims["email_verified"] = "true"
    return "id_token", oidc_provider.mint_id_token(claims, audience=CLIENT_ID)


def post_token(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/token", json=body)


@pytest.mark.parametrize("kind", [*list(LOGIN_KEYS), "oidc"])
def test_each_kind_exchanges_a_token_for_one_users_credentials(
    kind: str,
    aws: Any,
    oidc_provider: Any,
    facebook_api: Any,
    amazon_api: Any,
    provider_entries: dict[str, dict[str, Any]],
    client_for: ClientFor,
) -> None:
    entry = provider_entries[kind]
    entry["custom_role_arn"] = aws.user_role_arn
    entry["map"] = {"user_id": "{sub}", "display_name": "{name}"}
    client = client_for([entry])
    field, token = upstream_token(kind, "user-123", oidc_provider, facebook_api, amazon_api)

    response = post_token(client, {"provider": entry["name"], field: token})

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"].startswith("no-store")
    body = response.get_json()
    assert body["provider"] == entry["name"]
    assert body["user_id"] == "user-123"
    assert body["display_name"] == "Ada Lovelace"
    assert body["app_instance_arn"] == aws.app_instance_arn
    assert body["app_instance_user_arn"] == f"{aws.app_instance_arn}/user/user-123"
    assert body["region"] == "us-east-1"
    assert body["identity_id"].startswith("us-east-1:")
    assert set(body["credentials"]) == {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "expiration",
    }
    assert body["credentials"]["expiration"].endswith("Z")
    assert body["broker_session"]["token"].startswith("cbs_")

    login_key = LOGIN_KEYS.get(kind) or oidc_provider.issuer.split("://", 1)[1]
    get_id = aws.recorder.calls("GetId")
    assert get_id == [{"IdentityPoolId": aws.identity_pool_id, "Logins": {login_key: token}}]
    get_creds = aws.recorder.calls("GetCredentialsForIdentity")
    assert get_creds == [
        {
            "IdentityId": body["identity_id"],
            "Logins": {login_key: token},
            "CustomRoleArn": aws.user_role_arn,
        }
    ]


def test_a_returning_user_causes_no_second_get_id(
    aws: Any,
    oidc_provider: Any,
    provider_entries: dict[str, dict[str, Any]],
    client_for: ClientFor,
) -> None:
    client = client_for([provider_entries["oidc"]])
    first = post_token(
        client,
        {
            "provider": "corp",
            "id_token": oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID),
        },
    )
    second_token = oidc_provider.mint_id_token(
        {"sub": "alice", "jti": "another"}, audience=CLIENT_ID
    )
    second = post_token(client, {"provider": "corp", "id_token": second_token})
    other = post_token(
        client,
        {
            "provider": "corp",
            "id_token": oidc_provider.mint_id_token({"sub": "bob"}, audience=CLIENT_ID),
        },
    )
    assert first.status_code == second.status_code == other.status_code == 200
    assert first.get_json()["identity_id"] == second.get_json()["identity_id"]
    sessions = {r.get_json()["broker_session"]["token"] for r in (first, second, other)}
    assert len(sessions) == 3
    get_ids = aws.recorder.calls("GetId")
    assert len(get_ids) == 2  # alice once, bob once
    creds_calls = aws.recorder.calls("GetCredentialsForIdentity")
    assert len(creds_calls) == 3
    assert creds_calls[1]["Logins"] == {oidc_provider.issuer.split("://", 1)[1]: second_token}


def test_key_rotation_at_the_idp_is_followed_without_a_restart(
    aws: Any,
    oidc_provider: Any,
    provider_entries: dict[str, dict[str, Any]],
    client_for: ClientFor,
) -> None:
    client = client_for([provider_entries["oidc"]])
    before = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    assert post_token(client, {"provider": "corp", "id_token": before}).status_code == 200
    oidc_provider.rotate_keys(drop_old=True)
    after = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    assert post_token(client, {"provider": "corp", "id_token": after}).status_code == 200


# --- refusals ---------------------------------------------------------------------------


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


def _assemble(header: dict[str, Any], payload: dict[str, Any], signature: str) -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), signature]
    )


def alg_none(idp: Any) -> str:
    header, payload, _ = _segments(idp.mint_id_token({"sub": "mallory"}, audience=CLIENT_ID))
    header["alg"] = "none"
    return _assemble(header, payload, "")


def hs256_with_public_key(idp: Any) -> str:
    header, payload, _ = _segments(idp.mint_id_token({"sub": "mallory"}, audience=CLIENT_ID))
    header["alg"] = "HS256"
    public_pem = idp.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def flipped_signature(idp: Any) -> str:
    token = idp.mint_id_token({"sub": "mallory"}, audience=CLIENT_ID)
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def embedded_key(header_field: str) -> Callable[[Any], str]:
    def build(idp: Any) -> str:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER_KEY.public_key()))
        jwk["kid"] = "attacker"
        extra: dict[str, Any] = {
            "jwk": {"jwk": jwk},
            "jku": {"jku": "http://127.0.0.1:9/attacker-jwks"},
            "x5u": {"x5u": "http://127.0.0.1:9/attacker.pem"},
            "x5c": {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
        }[header_field]
        now = int(time.time())
        claims = {
            "iss": idp.issuer,
            "aud": CLIENT_ID,
            "sub": "mallory",
            "iat": now,
            "exp": now + 300,
        }
        return jwt.encode(
            claims, ATTACKER_KEY, algorithm="RS256", headers={"kid": "attacker", **extra}
        )

    return build


def minted(claims: dict[str, Any] | None = None, **options: Any) -> Callable[[Any], str]:
    def build(idp: Any) -> str:
        merged = {"sub": "mallory", **(claims or {})}
        options.setdefault("audience", CLIENT_ID)
        return idp.mint_id_token(merged, **options)

    return build


def with_header(**fields: Any) -> Callable[[Any], str]:
    def build(idp: Any) -> str:
        return idp.mint_id_token({"sub": "mallory"}, audience=CLIENT_ID, headers=fields)

    return build


NOW = int(time.time())

INVALID_TOKENS: dict[str, Callable[[Any], str]] = {
    "alg none": alg_none,
    "HS256 signed with the public key": hs256_with_public_key,
    "flipped signature byte": flipped_signature,
    "unknown kid": minted(kid="no-such-kid"),
    "embedded jwk": embedded_key("jwk"),
    "jku header": embedded_key("jku"),
    "x5u header": embedded_key("x5u"),
    "x5c header": embedded_key("x5c"),
    "expired": minted({"exp": NOW - 3600, "iat": NOW - 7200}),
    "not yet valid": minted({"nbf": NOW + 3600}),
    "iat far in the future": minted({"iat": NOW + 3600, "exp": NOW + 7200}),
    "missing exp": minted(omit=["exp"]),
    "wrong iss": minted({"iss": "https://evil.example"}),
    "wrong aud": minted(audience="someone-else"),
    "missing aud": minted(omit=["aud"]),
    "several aud without azp": minted({"aud": [CLIENT_ID, "other-app"]}),
    "several aud with foreign azp": minted({"aud": [CLIENT_ID, "other-app"], "azp": "other-app"}),
    "crit header": with_header(crit=["exp"]),
    "garbage": lambda idp: "this-is-not-a-jwt",
    "two segments": lambda idp: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
    "header not json": lambda idp: "bm90LWpzb24.eyJzdWIiOiJ4In0.c2ln",
}


@pytest.fixture
def corp_app(
    aws: Any, provider_entries: dict[str, dict[str, Any]], client_for: ClientFor
) -> FlaskClient:
    partner = dict(
        provider_entries["oidc"],
        name="partner",
        client_id="partner-app",
        exchange="cognito_developer",
        map={"user_id": "partner-{sub}"},
    )
    return client_for([provider_entries["oidc"], partner])


def assert_refused(response: Any, status: int, code: str, aws: Any) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code
    assert "credentials" not in body and "broker_session" not in body
    assert aws.recorder.requests() == []


@pytest.mark.parametrize("case", list(INVALID_TOKENS))
def test_invalid_tokens_are_refused_before_any_aws_call(
    case: str, aws: Any, oidc_provider: Any, corp_app: FlaskClient
) -> None:
    token = INVALID_TOKENS[case](oidc_provider)
    response = post_token(corp_app, {"provider": "corp", "id_token": token})
    assert_refused(response, 401, "invalid_token", aws)


def test_unknown_kids_cause_at_most_one_jwks_refresh(
    aws: Any, oidc_provider: Any, corp_app: FlaskClient
) -> None:
    good = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    assert post_token(corp_app, {"provider": "corp", "id_token": good}).status_code == 200
    aws.recorder.reset()
    fetches = oidc_provider.jwks_fetches
    for kid in ("unknown-1", "unknown-2", "unknown-3"):
        token = oidc_provider.mint_id_token({"sub": "mallory"}, audience=CLIENT_ID, kid=kid)
        assert_refused(
            post_token(corp_app, {"provider": "corp", "id_token": token}), 401, "invalid_token", aws
        )
    assert oidc_provider.jwks_fetches <= fetches + 1


def test_a_token_of_another_configured_provider_is_refused(
    aws: Any, oidc_provider: Any, corp_app: FlaskClient
) -> None:
    oidc_provider.register_client("partner-app")
    partner_token = oidc_provider.mint_id_token({"sub": "alice"}, audience="partner-app")
    assert_refused(
        post_token(corp_app, {"provider": "corp", "id_token": partner_token}),
        401,
        "invalid_token",
        aws,
    )


def test_a_one_megabyte_token_is_refused(aws: Any, corp_app: FlaskClient) -> None:
    response = post_token(corp_app, {"provider": "corp", "id_token": "a" * 1024 * 1024})
    assert_refused(response, 413, "payload_too_large", aws)


@pytest.mark.parametrize("kind", ["facebook", "amazon"])
def test_an_access_token_issued_to_another_app_is_refused(
    kind: str,
    aws: Any,
    facebook_api: Any,
    amazon_api: Any,
    provider_entries: dict[str, dict[str, Any]],
    client_for: ClientFor,
) -> None:
    client = client_for([provider_entries[kind]])
    token = "token-issued-to-another-app"
    if kind == "facebook":
        facebook_api.add_token(token, user_id="42", app_id="someone-elses-app")
    else:
        amazon_api.add_token(token, user_id="amzn1.account.42", aud="someone-else")
    response = post_token(client, {"provider": kind, "access_token": token})
    assert_refused(response, 401, "invalid_token", aws)


@pytest.mark.parametrize(
    "sub", ["a/b", "star*", "line\nbreak", "x" * 65, "../../user/admin", "has space"]
)
def test_claims_that_cannot_be_a_user_id_are_refused(
    sub: str, aws: Any, oidc_provider: Any, corp_app: FlaskClient
) -> None:
    token = oidc_provider.mint_id_token({"sub": sub}, audience=CLIENT_ID)
    response = post_token(corp_app, {"provider": "corp", "id_token": token})
    assert_refused(response, 422, "unmappable_identity", aws)


def test_unprefixed_ids_in_another_providers_namespace_are_refused(
    aws: Any, oidc_provider: Any, corp_app: FlaskClient
) -> None:
    token = oidc_provider.mint_id_token({"sub": "partner-alice"}, audience=CLIENT_ID)
    response = post_token(corp_app, {"provider": "corp", "id_token": token})
    assert_refused(response, 422, "unmappable_identity", aws)


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        (
            lambda c: c.post("/v1/token", data="provider=corp", content_type="text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            lambda c: c.post("/v1/token", data="{not json", content_type="application/json"),
            400,
            "invalid_request",
        ),
        (lambda c: c.post("/v1/token", json=["provider", "corp"]), 400, "invalid_request"),
        (lambda c: c.post("/v1/token", json={"provider": "corp"}), 400, "invalid_request"),
        (
            lambda c: c.post("/v1/token", json={"provider": "corp", "id_token": 12}),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post("/v1/token", json={"provider": "corp", "id_token": "x", "extra": 1}),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post(
                "/v1/token", json={"provider": "corp", "id_token": "x", "access_token": "y"}
            ),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post("/v1/token", json={"provider": "nobody", "id_token": "x"}),
            404,
            "unknown_provider",
        ),
        (
            lambda c: c.post(
                "/v1/token", data=b"{" + b" " * 70000 + b"}", content_type="application/json"
            ),
            413,
            "payload_too_large",
        ),
        (lambda c: c.get("/v1/token"), 405, "method_not_allowed"),
    ],
)
def test_malformed_requests_are_refused_before_any_aws_call(
    send: Callable[[FlaskClient], Any],
    status: int,
    code: str,
    aws: Any,
    corp_app: FlaskClient,
) -> None:
    assert_refused(send(corp_app), status, code, aws)
