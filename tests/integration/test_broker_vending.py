"""Vending on the broker's own authority, end to end through ``POST /v1/token``.

In ``exchange: sts`` and ``exchange: cognito_developer`` the broker, not AWS, decides who
the user is and which tags their credentials carry. A local OIDC provider (also standing in
for Google) and a local Facebook Graph API verify the tokens; the moto server's recorder
shows exactly what the broker then sent to AWS. moto drops session and principal tags, so
every success asserts the request, not only the answer.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FACEBOOK_APP_ID, FACEBOOK_APP_SECRET, FacebookApi
from tests.fixtures.apps import MakeApp
from tests.fixtures.configs import REMOVE
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.recorder import sts_tags

CLIENT_ID = "chat-mobile"
LEGACY_CLIENT_ID = "legacy-mobile"
USER_TAG = "chat_user"
STS_DURATION = 7200
TOKEN_DURATION = 900
MODES = ("sts", "cognito_developer")
SOCIAL_AND_OIDC = ("corp", "google", "facebook")
PREFIXES = {"corp": "corp-", "google": "google-", "facebook": "fb-", "legacy": ""}
# What a user must show to sign in through "corp"; see ``corp_claims``.
CHAT_USER = {"email_verified": True, "groups": ["staff", "chat-users"]}
# The AssumeRole parameters besides the tags: nothing else (no policy, no transitive keys).
ASSUME_ROLE_PARAMS = {
    "Action",
    "Version",
    "RoleArn",
    "RoleSessionName",
    "SourceIdentity",
    "DurationSeconds",
}


# -- arrangement ---------------------------------------------------------------------------


def provider_entries(
    mode: str, idp: DevIdentityProvider, facebook: FacebookApi
) -> list[dict[str, Any]]:
    """Three prefixed providers (OIDC, Google, Facebook) and one unprefixed OIDC provider,
    all vending through ``mode``, all verified by local parts."""
    idp.register_client(CLIENT_ID)
    idp.register_client(LEGACY_CLIENT_ID)
    return [
        {
            "name": "corp",
            "kind": "oidc",
            "issuer": idp.issuer,
            "client_id": CLIENT_ID,
            "exchange": mode,
            "map": {
                "user_id": "corp-{sub}",
                "display_name": "{name}",
                "tags": {"department": "{dept}"},
                "require": {"email_verified": True, "groups": {"any_of": ["chat-users"]}},
            },
        },
        {
            "name": "google",
            "kind": "google",
            "client_ids": [CLIENT_ID],
            "issuer": idp.issuer,
            "jwks_url": idp.url("/jwks"),
            "exchange": mode,
            "map": {"user_id": "google-{sub}", "tags": {"department": "{dept}"}},
        },
        {
            "name": "facebook",
            "kind": "facebook",
            "app_id": FACEBOOK_APP_ID,
            "app_secret": FACEBOOK_APP_SECRET,
            "debug_token_url": facebook.debug_token_url,
            "userinfo_url": facebook.userinfo_url,
            "exchange": mode,
            "map": {
                "user_id": "fb-{sub}",
                "display_name": "{name}",
                "tags": {"profile_name": "{name}"},
            },
        },
        {
            "name": "legacy",
            "kind": "oidc",
            "issuer": idp.issuer,
            "client_id": LEGACY_CLIENT_ID,
            "exchange": mode,
            "map": {"user_id": "{sub}"},
        },
    ]


BrokerClient = Callable[..., FlaskClient]


@pytest.fixture
def broker_client(make_app: MakeApp) -> BrokerClient:
    """``broker_client(providers, *, session_lifetime="8h", token_duration=TOKEN_DURATION,
    cache_credentials=True)``: a test client of a broker with ``providers``
    (``token_duration=None``: Cognito's own)."""

    def client(
        providers: list[dict[str, Any]],
        *,
        session_lifetime: str = "8h",
        token_duration: int | None = TOKEN_DURATION,
        cache_credentials: bool = True,
    ) -> FlaskClient:
        return make_app(
            service__cache_credentials=cache_credentials,
            aws__sts__duration_seconds=STS_DURATION,
            aws__cognito__token_duration=REMOVE if token_duration is None else token_duration,
            chime__user_tag=USER_TAG,
            service__session_lifetime=session_lifetime,
            providers=providers,
        ).test_client()

    return client


def corp_claims(sub: str, **claims: Any) -> dict[str, Any]:
    """Claims of a chat user at "corp"; ``claims`` override, a value of None removes."""
    merged = {"sub": sub, "name": "Ada Lovelace", "dept": "Research", **CHAT_USER, **claims}
    return {name: value for name, value in merged.items() if value is not None}


def login(
    client: FlaskClient,
    provider: str,
    sub: str,
    idp: DevIdentityProvider,
    facebook: FacebookApi,
    **claims: Any,
) -> tuple[Any, str]:
    """POST /v1/token as the mobile app of ``provider`` for user ``sub``; (response, token).

    OIDC and Google users are chat users of the Research department unless ``claims`` say
    otherwise; a Facebook user's ``name`` is their profile name.
    """
    if provider == "facebook":
        token = "fb-user-token-" + secrets.token_urlsafe(16)
        facebook.add_token(token, user_id=sub, profile={"name": claims.get("name", "Ada Lovelace")})
        return client.post("/v1/token", json={"provider": provider, "access_token": token}), token
    audience = LEGACY_CLIENT_ID if provider == "legacy" else CLIENT_ID
    token = idp.mint_id_token(corp_claims(sub, **claims), audience=audience)
    return client.post("/v1/token", json={"provider": provider, "id_token": token}), token


def expected_tags(provider: str, user_id: str, **claims: Any) -> dict[str, str]:
    extra = {"facebook": {"profile_name": claims.get("name", "Ada Lovelace")}, "legacy": {}}.get(
        provider, {"department": claims.get("dept", "Research")}
    )
    return {USER_TAG: user_id, **extra}


def arn_user_id(body: dict[str, Any], aws: AwsWorld) -> str:
    prefix = f"{aws.app_instance_arn}/user/"
    arn = body["app_instance_user_arn"]
    assert arn.startswith(prefix)
    return str(arn[len(prefix) :])


def assert_granted(response: Any, provider: str, user_id: str) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["provider"] == provider
    assert body["user_id"] == user_id
    assert body["credentials"]["access_key_id"]
    assert body["broker_session"]["token"]
    return body


def assert_token_never_left_the_broker(aws: AwsWorld, token: str) -> None:
    """In these modes AWS hears the broker's word, never the user's upstream token."""
    for request in aws.recorder.requests():
        assert token.encode() not in request.body
        assert token not in str(request.query_params)


def assert_refused(response: Any, status: int, code: str, aws: AwsWorld, mentions: str) -> None:
    """A problem response naming what was wrong, no credentials, and nothing sent to AWS."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code
    assert mentions in body["detail"]
    assert "credentials" not in body and "broker_session" not in body
    assert aws.recorder.requests() == []


# -- what is sent --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", SOCIAL_AND_OIDC)
def test_sts_assumes_the_user_role_with_the_users_tags(
    provider: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries("sts", oidc_provider, facebook_api))
    user_id = PREFIXES[provider] + "ada-42"

    response, token = login(client, provider, "ada-42", oidc_provider, facebook_api)

    body = assert_granted(response, provider, user_id)
    assert body["identity_id"] is None
    assert body["display_name"] == ("Ada Lovelace" if provider != "google" else user_id)
    assert aws.recorder.operations() == ["AssumeRole"]
    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleArn"] == aws.user_role_arn
    assert call["RoleSessionName"] == user_id
    assert call["SourceIdentity"] == user_id
    assert call["DurationSeconds"] == str(STS_DURATION)
    tags = sts_tags(call)
    assert tags == expected_tags(provider, user_id)
    assert arn_user_id(body, aws) == tags[USER_TAG] == user_id
    assert {name for name in call if not name.startswith("Tags.member.")} == ASSUME_ROLE_PARAMS
    assert_token_never_left_the_broker(aws, token)


@pytest.mark.parametrize("provider", SOCIAL_AND_OIDC)
def test_cognito_developer_vouches_for_the_user_with_principal_tags(
    provider: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries("cognito_developer", oidc_provider, facebook_api))
    user_id = PREFIXES[provider] + "ada-42"

    response, token = login(client, provider, "ada-42", oidc_provider, facebook_api)

    body = assert_granted(response, provider, user_id)
    assert body["identity_id"].startswith(f"{aws.region}:")
    assert aws.recorder.operations() == [
        "GetOpenIdTokenForDeveloperIdentity",
        "GetCredentialsForIdentity",
    ]
    [developer] = aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
    assert developer == {
        "IdentityPoolId": aws.identity_pool_id,
        "Logins": {aws.developer_provider_name: user_id},
        "PrincipalTags": expected_tags(provider, user_id),
        "TokenDuration": TOKEN_DURATION,
    }
    assert arn_user_id(body, aws) == developer["PrincipalTags"][USER_TAG] == user_id
    [get_credentials] = aws.recorder.calls("GetCredentialsForIdentity")
    assert get_credentials["IdentityId"] == body["identity_id"]
    assert list(get_credentials["Logins"]) == ["cognito-identity.amazonaws.com"]
    assert_token_never_left_the_broker(aws, token)


@pytest.mark.parametrize(
    ("token_duration", "expected"), [(TOKEN_DURATION, TOKEN_DURATION), (None, 300)]
)
def test_developer_token_duration_is_the_configured_one(
    token_duration: int | None,
    expected: int,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(
        provider_entries("cognito_developer", oidc_provider, facebook_api),
        token_duration=token_duration,
    )
    response, _ = login(client, "corp", "ada", oidc_provider, facebook_api)
    assert_granted(response, "corp", "corp-ada")
    [developer] = aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
    assert developer["TokenDuration"] == expected


@pytest.mark.parametrize(
    ("session_lifetime", "expected"),
    [("8h", STS_DURATION), ("20m", 1200), ("5m", 900)],
)
def test_sts_duration_never_outlives_the_session_but_keeps_the_sts_minimum(
    session_lifetime: str,
    expected: int,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(
        provider_entries("sts", oidc_provider, facebook_api), session_lifetime=session_lifetime
    )
    response, _ = login(client, "google", "ada", oidc_provider, facebook_api)
    assert_granted(response, "google", "google-ada")
    [call] = aws.recorder.calls("AssumeRole")
    assert call["DurationSeconds"] == str(expected)


@pytest.fixture
def partner_role(aws: AwsWorld) -> Iterator[str]:
    """A second user role, in the session's AWS for this test only."""
    iam = aws.client("iam")
    arn: str = iam.create_role(RoleName="PartnerChatUsers", AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    yield arn
    iam.delete_role(RoleName="PartnerChatUsers")


def test_a_providers_own_role_arn_wins_over_the_default(
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
    partner_role: str,
) -> None:
    aws.recorder.reset()
    providers = provider_entries("sts", oidc_provider, facebook_api)
    providers[0]["role_arn"] = partner_role
    client = broker_client(providers)

    corp, _ = login(client, "corp", "ada", oidc_provider, facebook_api)
    google, _ = login(client, "google", "ada", oidc_provider, facebook_api)

    assert_granted(corp, "corp", "corp-ada")
    assert_granted(google, "google", "google-ada")
    assert [call["RoleArn"] for call in aws.recorder.calls("AssumeRole")] == [
        partner_role,
        aws.user_role_arn,
    ]


def test_a_user_id_outside_the_session_name_alphabet_gets_a_stable_derived_name(
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    # Without the credential cache, so that the second login vends again.
    client = broker_client(
        provider_entries("sts", oidc_provider, facebook_api), cache_credentials=False
    )
    user_id = "corp-ada:lovelace"
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]

    first, _ = login(client, "corp", "ada:lovelace", oidc_provider, facebook_api)
    again, _ = login(client, "corp", "ada:lovelace", oidc_provider, facebook_api)

    assert_granted(first, "corp", user_id)
    assert_granted(again, "corp", user_id)
    calls = aws.recorder.calls("AssumeRole")
    assert len(calls) == 2
    for call in calls:
        assert call["RoleSessionName"] == call["SourceIdentity"] == f"corp-ada-lovelace-{digest}"
        assert sts_tags(call)[USER_TAG] == user_id


@pytest.mark.parametrize("mode", MODES)
def test_a_tag_value_of_exactly_256_characters_is_sent_unchanged(
    mode: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    dept = "R" * 256
    response, _ = login(client, "corp", "ada", oidc_provider, facebook_api, dept=dept)
    assert_granted(response, "corp", "corp-ada")
    if mode == "sts":
        [call] = aws.recorder.calls("AssumeRole")
        sent = sts_tags(call)
    else:
        [call] = aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
        sent = call["PrincipalTags"]
    assert sent["department"] == dept


# -- refusals before any AWS call ----------------------------------------------------------


def _user_id_of_length(prefix: str, length: int) -> str:
    return "x" * (length - len(prefix))


UNUSABLE_SUBJECTS: dict[str, Callable[[str], str]] = {
    "slash": lambda prefix: "ada/../admin",
    "star": lambda prefix: "*",
    "newline": lambda prefix: "ada\nlovelace",
    "65 characters": lambda prefix: _user_id_of_length(prefix, 65),
}


@pytest.mark.parametrize("case", list(UNUSABLE_SUBJECTS))
@pytest.mark.parametrize("provider", SOCIAL_AND_OIDC)
@pytest.mark.parametrize("mode", MODES)
def test_a_subject_that_cannot_be_a_user_id_is_refused(
    mode: str,
    provider: str,
    case: str,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    sub = UNUSABLE_SUBJECTS[case](PREFIXES[provider])
    response, _ = login(client, provider, sub, oidc_provider, facebook_api)
    assert_refused(response, 422, "unmappable_identity", aws, "user id")


def test_a_64_character_user_id_is_the_longest_accepted(
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries("sts", oidc_provider, facebook_api))
    sub = _user_id_of_length("corp-", 64)
    response, _ = login(client, "corp", sub, oidc_provider, facebook_api)
    assert_granted(response, "corp", "corp-" + sub)


@pytest.mark.parametrize("sub", ["corp-alice", "Google-alice", "FB-1234", "Corp-Bob"])
@pytest.mark.parametrize("mode", MODES)
def test_an_unprefixed_user_id_in_another_providers_namespace_is_refused(
    mode: str,
    sub: str,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    response, _ = login(client, "legacy", sub, oidc_provider, facebook_api)
    assert_refused(response, 422, "unmappable_identity", aws, "another provider's namespace")


@pytest.mark.parametrize("mode", MODES)
def test_an_unprefixed_user_id_outside_every_namespace_is_vended(
    mode: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    response, _ = login(client, "legacy", "alice", oidc_provider, facebook_api)
    body = assert_granted(response, "legacy", "alice")
    assert arn_user_id(body, aws) == "alice"


BAD_TAG_VALUES = {
    "257 characters": "R" * 257,
    "ampersand": "R&D",
    "angle brackets": "<script>",
    "emoji": "Research \U0001f52c",
    "newline": "Research\nAdmins",
}


@pytest.mark.parametrize("case", list(BAD_TAG_VALUES))
@pytest.mark.parametrize("mode", MODES)
def test_a_tag_value_sts_would_reject_is_refused(
    mode: str,
    case: str,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    value = BAD_TAG_VALUES[case]
    response, _ = login(client, "corp", "ada", oidc_provider, facebook_api, dept=value)
    assert_refused(response, 422, "unmappable_identity", aws, "tag 'department'")


@pytest.mark.parametrize("mode", MODES)
def test_a_social_profile_name_sts_would_reject_as_a_tag_is_refused(
    mode: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    response, _ = login(
        client, "facebook", "1234", oidc_provider, facebook_api, name="Ada & Charles"
    )
    assert_refused(response, 422, "unmappable_identity", aws, "tag 'profile_name'")


FAILING_REQUIREMENTS: dict[str, dict[str, Any]] = {
    "email_verified false": {"email_verified": False},
    "email_verified missing": {"email_verified": None},
    "email_verified 'yes'": {"email_verified": "yes"},
    "email_verified 'True'": {"email_verified": "True"},
    "email_verified 1": {"email_verified": 1},
    "email_verified as a list": {"email_verified": [True]},
    "groups without chat-users": {"groups": ["staff", "admins"]},
    "groups with a look-alike": {"groups": ["chat-users-old", "Chat-Users"]},
    "groups missing": {"groups": None},
    "groups empty": {"groups": []},
}


@pytest.mark.parametrize("case", list(FAILING_REQUIREMENTS))
@pytest.mark.parametrize("mode", MODES)
def test_failing_require_rules_are_refused(
    mode: str,
    case: str,
    aws: AwsWorld,
    broker_client: BrokerClient,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    claims = FAILING_REQUIREMENTS[case]
    response, _ = login(client, "corp", "ada", oidc_provider, facebook_api, **claims)
    assert_refused(response, 403, "access_denied", aws, f"claim {next(iter(claims))!r}")


@pytest.mark.parametrize("mode", MODES)
def test_meeting_the_require_rules_is_enough(
    mode: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    facebook_api: FacebookApi,
    broker_client: BrokerClient,
) -> None:
    client = broker_client(provider_entries(mode, oidc_provider, facebook_api))
    response, _ = login(
        client,
        "corp",
        "ada",
        oidc_provider,
        facebook_api,
        groups=["chat-users"],
        email_verified=True,
    )
    assert_granted(response, "corp", "corp-ada")
    assert len(aws.recorder.requests()) == (1 if mode == "sts" else 2)
