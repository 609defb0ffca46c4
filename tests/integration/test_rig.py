"""The test rig itself: moto over HTTP with its recorder, and the local OpenID Provider."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import jwt
import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2 import rfc9207
from authlib.oidc import discovery, rpinitiated
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.moto_server import AwsWorld, MotoServer
from tests.fixtures.recorder import RecordedRequest, sts_tags

REDIRECT_URI = "http://127.0.0.1:9/callback"


# -- moto -------------------------------------------------------------------


def test_bootstrap_creates_the_pool_and_roles_and_records_none_of_it(aws: AwsWorld) -> None:
    assert aws.recorder.requests() == []

    cognito = aws.client("cognito-identity")
    pools = cognito.list_identity_pools(MaxResults=60)["IdentityPools"]
    assert [p["IdentityPoolId"] for p in pools] == [aws.identity_pool_id]
    pool = cognito.describe_identity_pool(IdentityPoolId=aws.identity_pool_id)
    assert pool["DeveloperProviderName"] == "login.test.chat"
    assert pool["AllowUnauthenticatedIdentities"] is False
    assert set(pool["SupportedLoginProviders"]) == {
        "accounts.google.com",
        "appleid.apple.com",
        "graph.facebook.com",
        "www.amazon.com",
    }

    iam = aws.client("iam")
    user_role = iam.get_role(RoleName="ChimeMessagingSampleAppUserRole")["Role"]
    server_role = iam.get_role(RoleName="ChimeMessagingSampleAppServerRole")["Role"]
    assert user_role["Arn"] == aws.user_role_arn
    assert server_role["Arn"] == aws.server_role_arn
    assert (
        aws.user_role_arn == f"arn:aws:iam::{aws.account_id}:role/ChimeMessagingSampleAppUserRole"
    )
    trust = _policy(user_role["AssumeRolePolicyDocument"])
    by_principal = {json.dumps(s["Principal"], sort_keys=True): s for s in trust["Statement"]}
    broker = by_principal[json.dumps({"AWS": aws.server_role_arn})]
    assert set(broker["Action"]) == {"sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"}
    cognito_users = by_principal[json.dumps({"Federated": "cognito-identity.amazonaws.com"})]
    assert set(cognito_users["Action"]) == {"sts:AssumeRoleWithWebIdentity", "sts:TagSession"}
    assert cognito_users["Condition"]["StringEquals"] == {
        "cognito-identity.amazonaws.com:aud": aws.identity_pool_id
    }
    assert aws.app_instance_arn == (
        "arn:aws:chime:us-east-1:123456789012:app-instance/test-app-instance"
    )

    assert [r.operation for r in aws.recorder.requests()] == [
        "ListIdentityPools",
        "DescribeIdentityPool",
        "GetRole",
        "GetRole",
    ]


def test_sdk_environment_points_at_moto(aws: AwsWorld) -> None:
    # A client built from the environment alone, as the broker builds its own.
    identity = boto3.session.Session().client("sts").get_caller_identity()
    assert identity["Account"] == aws.account_id
    [call] = aws.recorder.requests()
    assert call.operation == "GetCallerIdentity"
    assert call.service == "sts"
    assert call.region == "us-east-1"


def test_recorder_decodes_a_json_protocol_call(aws: AwsWorld) -> None:
    logins = {"accounts.google.com": "header.payload.signature"}
    boto3.session.Session().client("cognito-identity").get_id(
        IdentityPoolId=aws.identity_pool_id, Logins=logins
    )

    [request] = aws.recorder.requests()
    assert isinstance(request, RecordedRequest)
    assert request.method == "POST"
    assert request.path == "/"
    assert request.headers["x-amz-target"] == "AWSCognitoIdentityService.GetId"
    assert request.operation == "GetId"
    # GetId is an unsigned API: the SDK sends no SigV4 scope to read a service from.
    assert "authorization" not in request.headers
    assert request.service is None
    assert json.loads(request.body) == request.params
    assert aws.recorder.calls("GetId") == [
        {"IdentityPoolId": aws.identity_pool_id, "Logins": logins}
    ]
    assert aws.recorder.calls("GetCredentialsForIdentity") == []


def test_recorder_decodes_a_query_protocol_call_and_its_session_tags(aws: AwsWorld) -> None:
    aws.client("sts").assume_role(
        RoleArn=aws.user_role_arn,
        RoleSessionName="okta-alice",
        SourceIdentity="okta-alice",
        DurationSeconds=900,
        Tags=[
            {"Key": "my_applications_user_id", "Value": "okta-alice"},
            {"Key": "department", "Value": "R&D = research/dev"},
        ],
    )

    [request] = aws.recorder.requests()
    assert request.operation == "AssumeRole"
    assert request.service == "sts"
    [params] = aws.recorder.calls("AssumeRole")
    assert params["Action"] == "AssumeRole"
    assert params["RoleArn"] == aws.user_role_arn
    assert params["RoleSessionName"] == "okta-alice"
    assert params["SourceIdentity"] == "okta-alice"
    assert params["DurationSeconds"] == "900"
    assert request.query_params["Tags.member.1.Key"] == ["my_applications_user_id"]
    assert request.query_params["Tags.member.2.Value"] == ["R&D = research/dev"]
    assert sts_tags(params) == {
        "my_applications_user_id": "okta-alice",
        "department": "R&D = research/dev",
    }


def test_sts_tags_refuses_half_a_tag() -> None:
    with pytest.raises(ValueError, match=r"Tags\.member\.2"):
        sts_tags({"Tags.member.1.Key": "a", "Tags.member.1.Value": "1", "Tags.member.2.Key": "b"})
    assert sts_tags({"Action": "AssumeRole"}) == {}


def test_recorder_reset_forgets_and_stop_pauses(aws: AwsWorld) -> None:
    sts = aws.client("sts")
    sts.get_caller_identity()
    aws.recorder.reset()
    assert aws.recorder.requests() == []

    aws.recorder.stop()
    sts.get_caller_identity()
    assert aws.recorder.requests() == []
    aws.recorder.start()
    sts.get_caller_identity()
    assert aws.recorder.operations() == ["GetCallerIdentity"]


def test_recording_lands_in_a_temporary_directory(
    moto_server: MotoServer, aws: AwsWorld, pytestconfig: pytest.Config
) -> None:
    aws.client("sts").get_caller_identity()

    recorded = moto_server.recording_path.read_text().splitlines()
    assert len(recorded) == len(aws.recorder.requests()) == 1
    repository = Path(pytestconfig.rootpath).resolve()
    assert not moto_server.recording_path.resolve().is_relative_to(repository)
    assert not (Path.cwd() / "moto_recording").exists()
    assert not (repository / "moto_recording").exists()


# -- the local OpenID Provider -----------------------------------------------


def _policy(document: Any) -> dict[str, Any]:
    return json.loads(document) if isinstance(document, str) else dict(document)


def _fetch_keys(provider: DevIdentityProvider) -> dict[str, jwt.PyJWK]:
    response = requests.get(provider.url("/jwks"), timeout=5)
    response.raise_for_status()
    return {str(key.key_id): key for key in jwt.PyJWKSet.from_dict(response.json()).keys}


def _verify(provider: DevIdentityProvider, token: str, audience: str = "test-client") -> Any:
    keys = _fetch_keys(provider)
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(
        token,
        key=keys[kid],
        algorithms=["RS256"],
        audience=audience,
        issuer=provider.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )


def _redirect_params(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _pkce_session(provider: DevIdentityProvider, **kwargs: Any) -> OAuth2Session:
    return OAuth2Session(
        client_id="test-client",
        redirect_uri=REDIRECT_URI,
        scope="openid email profile groups offline_access",
        code_challenge_method="S256",
        **kwargs,
    )


def test_discovery_document_and_jwks(oidc_provider: DevIdentityProvider) -> None:
    response = requests.get(oidc_provider.url("/.well-known/openid-configuration"), timeout=5)
    document = response.json()

    discovery.OpenIDProviderMetadata(document).validate(
        metadata_classes=[rpinitiated.OpenIDProviderMetadata, rfc9207.AuthorizationServerMetadata]
    )
    assert document["issuer"] == oidc_provider.issuer
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", oidc_provider.issuer)
    assert document["authorization_endpoint"] == oidc_provider.url("/authorize")
    assert document["token_endpoint"] == oidc_provider.url("/token")
    assert document["jwks_uri"] == oidc_provider.url("/jwks")
    assert document["userinfo_endpoint"] == oidc_provider.url("/userinfo")
    assert document["end_session_endpoint"] == oidc_provider.url("/logout")
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]

    assert oidc_provider.jwks_fetches == 0
    keys = _fetch_keys(oidc_provider)
    assert oidc_provider.jwks_fetches == 1
    assert list(keys) == [oidc_provider.signing_kid]
    assert keys[oidc_provider.signing_kid].key_type == "RSA"
    assert oidc_provider.public_jwk["kid"] == oidc_provider.signing_kid
    assert "d" not in oidc_provider.public_jwk


def test_minted_token_verifies_against_the_published_jwks(
    oidc_provider: DevIdentityProvider,
) -> None:
    token = oidc_provider.mint_id_token({"nonce": "n-1"})
    claims = _verify(oidc_provider, token)
    assert claims["sub"] == "alice-sub"
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["chat-users"]
    assert claims["nonce"] == "n-1"
    assert claims["exp"] - claims["iat"] == 300

    without_exp = oidc_provider.mint_id_token(omit=["exp"])
    with pytest.raises(jwt.MissingRequiredClaimError):
        _verify(oidc_provider, without_exp)

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = oidc_provider.mint_id_token(key=foreign)
    assert jwt.get_unverified_header(forged)["kid"] == oidc_provider.signing_kid
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(oidc_provider, forged)

    public_pem = oidc_provider.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = oidc_provider.mint_id_token(alg="HS256", key=public_pem)
    assert jwt.get_unverified_header(confused)["alg"] == "HS256"
    with pytest.raises(jwt.InvalidAlgorithmError):
        _verify(oidc_provider, confused)

    other_audience = oidc_provider.mint_id_token(audience="someone-else")
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(oidc_provider, other_audience)

    embedded = oidc_provider.mint_id_token(headers={"jwk": oidc_provider.public_jwk, "kid": None})
    assert set(jwt.get_unverified_header(embedded)) == {"alg", "typ", "jwk"}


def test_rotation_publishes_a_new_kid(oidc_provider: DevIdentityProvider) -> None:
    old_kid = oidc_provider.signing_kid
    old_token = oidc_provider.mint_id_token()

    new_kid = oidc_provider.rotate_keys()
    assert new_kid != old_kid
    assert oidc_provider.signing_kid == new_kid
    assert list(_fetch_keys(oidc_provider)) == [new_kid, old_kid]
    new_token = oidc_provider.mint_id_token()
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert _verify(oidc_provider, new_token)["sub"] == "alice-sub"
    assert _verify(oidc_provider, old_token)["sub"] == "alice-sub"

    newest_kid = oidc_provider.rotate_keys(drop_old=True)
    assert list(_fetch_keys(oidc_provider)) == [newest_kid]
    assert newest_kid not in (old_kid, new_kid)


def test_code_flow_with_pkce_nonce_refresh_and_revocation(
    oidc_provider: DevIdentityProvider,
) -> None:
    oidc_provider.register_client("test-client", redirect_uris=[REDIRECT_URI])
    oidc_provider.next_login("alice-sub", claims={"department": "research"})
    client = _pkce_session(oidc_provider)
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = client.create_authorization_url(
        oidc_provider.url("/authorize"), nonce=nonce, code_verifier=verifier
    )

    redirect = requests.get(url, allow_redirects=False, timeout=5)
    params = _redirect_params(redirect)
    assert params["state"] == state
    assert params["iss"] == oidc_provider.issuer

    token = client.fetch_token(
        oidc_provider.url("/token"),
        authorization_response=redirect.headers["Location"],
        code_verifier=verifier,
    )
    assert oidc_provider.token_requests == 1
    id_claims = _verify(oidc_provider, token["id_token"])
    assert id_claims["nonce"] == nonce
    assert id_claims["sub"] == "alice-sub"
    assert id_claims["email_verified"] is True
    assert id_claims["department"] == "research"
    assert token["refresh_token"]

    userinfo = requests.get(
        oidc_provider.url("/userinfo"),
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=5,
    )
    assert userinfo.json()["sub"] == "alice-sub"

    with pytest.raises(OAuthError) as replayed:
        _pkce_session(oidc_provider).fetch_token(
            oidc_provider.url("/token"),
            authorization_response=redirect.headers["Location"],
            code_verifier=verifier,
        )
    assert replayed.value.error == "invalid_grant"

    refreshed = client.refresh_token(
        oidc_provider.url("/token"), refresh_token=token["refresh_token"]
    )
    assert refreshed["access_token"] != token["access_token"]
    refreshed_claims = _verify(oidc_provider, refreshed["id_token"])
    assert refreshed_claims["sub"] == "alice-sub"
    assert "nonce" not in refreshed_claims

    assert oidc_provider.revoke_refresh_tokens("alice-sub") == 1
    with pytest.raises(OAuthError) as revoked:
        client.refresh_token(oidc_provider.url("/token"), refresh_token=token["refresh_token"])
    assert revoked.value.error == "invalid_grant"


def test_pkce_is_required_and_checked(oidc_provider: DevIdentityProvider) -> None:
    oidc_provider.register_client("test-client", redirect_uris=[REDIRECT_URI])
    plain = OAuth2Session(client_id="test-client", redirect_uri=REDIRECT_URI, scope="openid")
    url, _ = plain.create_authorization_url(oidc_provider.url("/authorize"))
    oidc_provider.next_login("alice-sub")
    params = _redirect_params(requests.get(url, allow_redirects=False, timeout=5))
    assert params["error"] == "invalid_request"
    assert params["iss"] == oidc_provider.issuer

    client = _pkce_session(oidc_provider)
    url, _ = client.create_authorization_url(
        oidc_provider.url("/authorize"), code_verifier=secrets.token_urlsafe(48)
    )
    redirect = requests.get(url, allow_redirects=False, timeout=5)
    assert "code" in _redirect_params(redirect)
    with pytest.raises(OAuthError) as wrong:
        client.fetch_token(
            oidc_provider.url("/token"),
            authorization_response=redirect.headers["Location"],
            code_verifier=secrets.token_urlsafe(48),
        )
    assert wrong.value.error == "invalid_grant"


def test_login_page_signs_in_or_cancels(oidc_provider: DevIdentityProvider) -> None:
    oidc_provider.register_client("test-client", redirect_uris=[REDIRECT_URI])
    client = _pkce_session(oidc_provider)
    url, state = client.create_authorization_url(
        oidc_provider.url("/authorize"), code_verifier=secrets.token_urlsafe(48)
    )
    page = requests.get(url, timeout=5)
    assert page.status_code == 200
    assert "Alice Example" in page.text
    assert ">Sign in</button>" in page.text
    assert ">Cancel</button>" in page.text
    form = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    assert form["state"] == state

    cancelled = requests.post(
        oidc_provider.url("/authorize"),
        data={**form, "action": "cancel"},
        allow_redirects=False,
        timeout=5,
    )
    params = _redirect_params(cancelled)
    assert params["error"] == "access_denied"
    assert params["state"] == state
    assert params["iss"] == oidc_provider.issuer

    signed_in = requests.post(
        oidc_provider.url("/authorize"),
        data={**form, "action": "sign_in", "user": "alice-sub"},
        allow_redirects=False,
        timeout=5,
    )
    assert set(_redirect_params(signed_in)) == {"code", "state", "iss"}


def test_confidential_client_authenticates_with_its_secret(
    oidc_provider: DevIdentityProvider,
) -> None:
    oidc_provider.register_client(
        "broker", client_secret="s3cret-value", redirect_uris=[REDIRECT_URI]
    )
    for method in ("client_secret_basic", "client_secret_post"):
        oidc_provider.next_login("alice-sub")
        verifier = secrets.token_urlsafe(48)
        client = OAuth2Session(
            client_id="broker",
            client_secret="s3cret-value",
            redirect_uri=REDIRECT_URI,
            scope="openid",
            code_challenge_method="S256",
            token_endpoint_auth_method=method,
        )
        url, _ = client.create_authorization_url(
            oidc_provider.url("/authorize"), code_verifier=verifier
        )
        location = requests.get(url, allow_redirects=False, timeout=5).headers["Location"]
        token = client.fetch_token(
            oidc_provider.url("/token"), authorization_response=location, code_verifier=verifier
        )
        assert _verify(oidc_provider, token["id_token"], audience="broker")["sub"] == "alice-sub"

    oidc_provider.next_login("alice-sub")
    verifier = secrets.token_urlsafe(48)
    impostor = OAuth2Session(
        client_id="broker",
        client_secret="wrong",
        redirect_uri=REDIRECT_URI,
        scope="openid",
        code_challenge_method="S256",
    )
    url, _ = impostor.create_authorization_url(
        oidc_provider.url("/authorize"), code_verifier=verifier
    )
    location = requests.get(url, allow_redirects=False, timeout=5).headers["Location"]
    with pytest.raises(OAuthError) as refused:
        impostor.fetch_token(
            oidc_provider.url("/token"), authorization_response=location, code_verifier=verifier
        )
    assert refused.value.error == "invalid_client"


def test_logout_redirects_only_with_a_valid_id_token_hint(
    oidc_provider: DevIdentityProvider,
) -> None:
    after = "http://127.0.0.1:9/signed-out"
    oidc_provider.register_client(
        "test-client", redirect_uris=[REDIRECT_URI], post_logout_redirect_uris=[after]
    )
    hint = oidc_provider.mint_id_token()

    redirected = requests.get(
        oidc_provider.url("/logout"),
        params={"id_token_hint": hint, "post_logout_redirect_uri": after, "state": "s1"},
        allow_redirects=False,
        timeout=5,
    )
    assert redirected.status_code == 302
    assert redirected.headers["Location"] == f"{after}?state=s1"

    page = requests.get(
        oidc_provider.url("/logout"),
        params={"client_id": "test-client", "post_logout_redirect_uri": after},
        allow_redirects=False,
        timeout=5,
    )
    assert page.status_code == 200
    assert "signed out" in page.text

    assert [(lo.sub, lo.id_token_hint_valid) for lo in oidc_provider.logouts] == [
        ("alice-sub", True),
        (None, False),
    ]
