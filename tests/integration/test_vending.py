"""The vending layer against a real moto server: what each exchange mode returns and
exactly what it sent to AWS, and how AWS failures become broker errors.

moto checks almost nothing (GetId accepts any token, STS drops session tags), so every
test asserts the parameters the recorder saw, not only the answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from identity import errors
from identity.aws import AwsClients
from identity.config.document import BrokerConfig
from identity.models import MappedUser, Principal, VendedCredentials
from identity.store import Store, open_store
from identity.vending.base import Vendor, VendRequest
from identity.vending.cognito import (
    COGNITO_LOGIN_KEY,
    CognitoDeveloperVendor,
    CognitoEnhancedVendor,
    identity_cache_key,
)
from identity.vending.registry import build_vendors
from identity.vending.sts import StsVendor, role_session_name
from tests.fixtures.apps import MakeConfig
from tests.fixtures.counting_store import CountingStore
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.recorder import sts_tags
from tests.fixtures.records import UNREADABLE, spoil

USER_TAG = "my_applications_user_id"
GOOGLE = "accounts.google.com"
STS_DURATION = 7200
TOKEN_DURATION = 600
GUEST_TTL = 1200
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)


# -- arrangement ---------------------------------------------------------------------------


# ``make_config`` overrides: what every vendor here is configured with.
DURATIONS: dict[str, Any] = {
    "aws__cognito__token_duration": TOKEN_DURATION,
    "aws__sts__duration_seconds": STS_DURATION,
    "chime__user_tag": USER_TAG,
}


def partner_role_arn(aws: AwsWorld) -> str:
    return f"arn:aws:iam::{aws.account_id}:role/PartnerChatUsers"


def all_providers(aws: AwsWorld) -> list[dict[str, Any]]:
    return [
        {
            "name": "google",
            "kind": "google",
            "client_ids": ["1234-web.apps.googleusercontent.com"],
            "exchange": "cognito",
            "custom_role_arn": aws.user_role_arn,
        },
        {
            "name": "okta",
            "kind": "oidc",
            "issuer": "https://example.okta.com/oauth2/default",
            "client_id": "0oa1example",
            "exchange": "cognito_developer",
            "map": {"user_id": "okta-{sub}", "tags": {"department": "{dept}"}},
        },
        {
            "name": "corp",
            "kind": "oidc",
            "issuer": "https://login.corp.example",
            "client_id": "corp-chat",
            "exchange": "sts",
            "map": {"user_id": "corp-{sub}", "tags": {"department": "{dept}"}},
        },
        {
            "name": "partner",
            "kind": "oidc",
            "issuer": "https://login.partner.example",
            "client_id": "partner-chat",
            "exchange": "sts",
            "role_arn": partner_role_arn(aws),
            "map": {"user_id": "partner-{sub}"},
        },
        {
            "name": "guests",
            "kind": "guest",
            "exchange": "sts",
            "allow_open_guests": True,
            "credential_ttl": GUEST_TTL,
        },
    ]


@pytest.fixture
def config(aws: AwsWorld, make_config: MakeConfig) -> BrokerConfig:
    return make_config(providers=all_providers(aws), **DURATIONS)


@pytest.fixture
def clients(config: BrokerConfig) -> AwsClients:
    return AwsClients(config, max_pool_connections=4)


@pytest.fixture
def store() -> Iterator[Store]:
    opened = open_store("memory://")
    yield opened
    opened.close()


@pytest.fixture
def vendors(config: BrokerConfig, clients: AwsClients, store: Store) -> dict[str, Vendor]:
    return build_vendors(config, clients, store)


def request_for(
    config: BrokerConfig,
    provider: str,
    user_id: str,
    *,
    subject: str | None = None,
    login_key: str | None = None,
    login_token: str | None = None,
    tags: Mapping[str, str] | None = None,
    max_duration: int | None = None,
) -> VendRequest:
    provider_cfg = config.provider(provider)
    assert provider_cfg is not None
    return VendRequest(
        provider=provider_cfg,
        user=MappedUser(
            provider=provider,
            user_id=user_id,
            display_name=f"User {user_id}",
            tags={USER_TAG: user_id, **(tags or {})},
        ),
        principal=Principal(
            provider=provider,
            issuer=f"https://{provider}.example",
            subject=subject or user_id,
            login_key=login_key,
            login_token=login_token,
        ),
        max_duration=max_duration,
    )


def google_request(config: BrokerConfig, subject: str, token: str) -> VendRequest:
    return request_for(
        config, "google", subject, subject=subject, login_key=GOOGLE, login_token=token
    )


def identity_record(identity_id: str) -> bytes:
    """How the broker stores a resolved Cognito identity id."""
    return b'{"v":1,"identity_id":"' + identity_id.encode() + b'"}'


def assert_aware_utc_in_future(credentials: VendedCredentials) -> None:
    assert credentials.expiration.utcoffset() == timedelta(0)
    assert credentials.expiration > datetime.now(UTC)


# -- registry ------------------------------------------------------------------------------


def test_registry_builds_one_vendor_per_exchange_mode_in_use(
    aws: AwsWorld,
    config: BrokerConfig,
    clients: AwsClients,
    store: Store,
    make_config: MakeConfig,
) -> None:
    vendors = build_vendors(config, clients, store)
    assert set(vendors) == {"cognito", "cognito_developer", "sts"}
    assert isinstance(vendors["cognito"], CognitoEnhancedVendor)
    assert isinstance(vendors["cognito_developer"], CognitoDeveloperVendor)
    assert isinstance(vendors["sts"], StsVendor)

    sts_only = make_config(providers=all_providers(aws)[2:], **DURATIONS)
    assert set(build_vendors(sts_only, AwsClients(sts_only), store)) == {"sts"}
    assert aws.recorder.operations() == []


# -- exchange: cognito ---------------------------------------------------------------------


def test_enhanced_flow_sends_the_token_to_get_id_and_get_credentials(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor], store: Store
) -> None:
    credentials = vendors["cognito"].vend(google_request(config, "108234", "google-id-token-1"))

    assert credentials.access_key_id == "TESTACCESSKEY12345"
    assert credentials.secret_access_key == "ABCSECRETKEY"
    assert credentials.session_token == "ABC12345"
    assert_aware_utc_in_future(credentials)
    assert credentials.identity_id is not None
    assert credentials.identity_id.startswith(f"{aws.region}:")

    assert aws.recorder.operations() == ["GetId", "GetCredentialsForIdentity"]
    assert aws.recorder.calls("GetId") == [
        {"IdentityPoolId": aws.identity_pool_id, "Logins": {GOOGLE: "google-id-token-1"}}
    ]
    assert aws.recorder.calls("GetCredentialsForIdentity") == [
        {
            "IdentityId": credentials.identity_id,
            "Logins": {GOOGLE: "google-id-token-1"},
            "CustomRoleArn": aws.user_role_arn,
        }
    ]
    key = identity_cache_key("cognito", aws.identity_pool_id, GOOGLE, "108234")
    assert "108234" not in key
    assert store.get(key) == identity_record(credentials.identity_id)


def test_enhanced_flow_resolves_each_subject_once(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    vendor = vendors["cognito"]
    first = vendor.vend(google_request(config, "108234", "token-a1"))
    again = vendor.vend(google_request(config, "108234", "token-a2"))
    other = vendor.vend(google_request(config, "207777", "token-b1"))

    assert again.identity_id == first.identity_id
    assert other.identity_id not in (None, first.identity_id)
    assert aws.recorder.calls("GetId") == [
        {"IdentityPoolId": aws.identity_pool_id, "Logins": {GOOGLE: "token-a1"}},
        {"IdentityPoolId": aws.identity_pool_id, "Logins": {GOOGLE: "token-b1"}},
    ]
    assert [
        (call["IdentityId"], call["Logins"])
        for call in aws.recorder.calls("GetCredentialsForIdentity")
    ] == [
        (first.identity_id, {GOOGLE: "token-a1"}),
        (first.identity_id, {GOOGLE: "token-a2"}),
        (other.identity_id, {GOOGLE: "token-b1"}),
    ]


def test_an_identity_id_a_worker_has_seen_is_not_read_from_the_store_again(
    aws: AwsWorld, config: BrokerConfig, clients: AwsClients, store: Store
) -> None:
    counted = CountingStore(store)
    key = identity_cache_key("cognito", aws.identity_pool_id, GOOGLE, "108234")
    first_worker = CognitoEnhancedVendor(config, clients, counted)  # type: ignore[arg-type]
    first = first_worker.vend(google_request(config, "108234", "token-1"))
    again = first_worker.vend(google_request(config, "108234", "token-2"))
    assert counted.keys.count(("get", key)) == 1  # the first vend's miss

    # Another worker reads it once from the store, and sends it without calling GetId.
    second_worker = CognitoEnhancedVendor(config, clients, counted)  # type: ignore[arg-type]
    third = second_worker.vend(google_request(config, "108234", "token-3"))
    second_worker.vend(google_request(config, "108234", "token-4"))

    assert counted.keys.count(("get", key)) == 2
    assert first.identity_id == again.identity_id == third.identity_id
    assert len(aws.recorder.calls("GetId")) == 1
    assert [c["IdentityId"] for c in aws.recorder.calls("GetCredentialsForIdentity")] == [
        first.identity_id
    ] * 4


def test_enhanced_flow_without_custom_role_sends_none(
    aws: AwsWorld, store: Store, make_config: MakeConfig
) -> None:
    providers = all_providers(aws)
    del providers[0]["custom_role_arn"]
    config = make_config(providers=providers, **DURATIONS)
    vendor = CognitoEnhancedVendor(config, AwsClients(config), store)

    vendor.vend(google_request(config, "108234", "google-id-token"))

    [call] = aws.recorder.calls("GetCredentialsForIdentity")
    assert "CustomRoleArn" not in call
    assert call["Logins"] == {GOOGLE: "google-id-token"}


def test_enhanced_flow_without_a_token_needs_a_new_login(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    with pytest.raises(errors.ReauthenticationRequired):
        vendors["cognito"].vend(
            request_for(config, "google", "108234", login_key=GOOGLE, login_token=None)
        )
    assert aws.recorder.operations() == []


# -- exchange: cognito_developer -----------------------------------------------------------


def test_developer_flow_vouches_for_the_user_with_principal_tags(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    request = request_for(config, "okta", "okta-00u1abc", tags={"department": "Research"})
    credentials = vendors["cognito_developer"].vend(request)

    assert credentials.access_key_id == "TESTACCESSKEY12345"
    assert_aware_utc_in_future(credentials)
    assert aws.recorder.operations() == [
        "GetOpenIdTokenForDeveloperIdentity",
        "GetCredentialsForIdentity",
    ]
    assert aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity") == [
        {
            "IdentityPoolId": aws.identity_pool_id,
            "Logins": {aws.developer_provider_name: "okta-00u1abc"},
            "PrincipalTags": {USER_TAG: "okta-00u1abc", "department": "Research"},
            "TokenDuration": TOKEN_DURATION,
        }
    ]
    [get_credentials] = aws.recorder.calls("GetCredentialsForIdentity")
    assert get_credentials["IdentityId"] == credentials.identity_id
    assert set(get_credentials) == {"IdentityId", "Logins"}
    assert list(get_credentials["Logins"]) == [COGNITO_LOGIN_KEY]
    assert get_credentials["Logins"][COGNITO_LOGIN_KEY]


def test_developer_flow_reuses_the_identity_id_it_learned(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    vendor = vendors["cognito_developer"]
    first = vendor.vend(request_for(config, "okta", "okta-00u1abc"))
    again = vendor.vend(request_for(config, "okta", "okta-00u1abc"))
    other = vendor.vend(request_for(config, "okta", "okta-00u2def"))

    assert again.identity_id == first.identity_id
    assert other.identity_id != first.identity_id
    assert [
        call.get("IdentityId") for call in aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
    ] == [None, first.identity_id, None]


def spoil_identity(store: Store, key: str, how: str) -> None:
    """Replace the identity id record at ``key`` by an unreadable one; ``"bare"`` is the
    identity id alone, not a record."""
    stored = store.get(key)
    assert stored is not None
    if how == "bare":
        cached = json.loads(stored)["identity_id"]
        store.set(key, cached.encode(), 3600)
    else:
        store.set(key, spoil(stored, how, field="identity_id"), 3600)


@pytest.mark.parametrize("how", [*UNREADABLE, "bare"])
def test_an_identity_id_stored_in_a_form_this_version_does_not_read_is_resolved_again(
    how: str, aws: AwsWorld, config: BrokerConfig, clients: AwsClients, local_store: Store
) -> None:
    CognitoEnhancedVendor(config, clients, local_store).vend(
        google_request(config, "108234", "token-1")
    )
    key = identity_cache_key("cognito", aws.identity_pool_id, GOOGLE, "108234")
    spoil_identity(local_store, key, how)
    aws.recorder.reset()

    # another worker, which has not seen the user and reads the store
    vendor = CognitoEnhancedVendor(config, clients, local_store)
    again = vendor.vend(google_request(config, "108234", "token-2"))

    assert aws.recorder.operations() == ["GetId", "GetCredentialsForIdentity"]
    assert again.identity_id is not None
    assert local_store.get(key) == identity_record(again.identity_id)


@pytest.mark.parametrize("how", [*UNREADABLE, "bare"])
def test_a_developer_identity_id_stored_in_a_form_this_version_does_not_read_is_not_sent(
    how: str, aws: AwsWorld, config: BrokerConfig, clients: AwsClients, local_store: Store
) -> None:
    CognitoDeveloperVendor(config, clients, local_store).vend(
        request_for(config, "okta", "okta-00u1abc")
    )
    key = identity_cache_key(
        "cognito_developer", aws.identity_pool_id, aws.developer_provider_name, "okta-00u1abc"
    )
    spoil_identity(local_store, key, how)
    aws.recorder.reset()

    # another worker, which has not seen the user and reads the store
    vendor = CognitoDeveloperVendor(config, clients, local_store)
    again = vendor.vend(request_for(config, "okta", "okta-00u1abc"))

    [call] = aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
    assert "IdentityId" not in call
    assert again.identity_id is not None
    assert local_store.get(key) == identity_record(again.identity_id)


# -- exchange: sts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_duration", "expected"),
    [(None, STS_DURATION), (2000, 2000), (100, 900), (99999, STS_DURATION)],
)
def test_assume_role_with_session_tags_and_duration(
    aws: AwsWorld,
    config: BrokerConfig,
    vendors: dict[str, Vendor],
    max_duration: int | None,
    expected: int,
) -> None:
    request = request_for(
        config, "corp", "corp-ada", tags={"department": "Research"}, max_duration=max_duration
    )
    before = datetime.now(UTC)
    credentials = vendors["sts"].vend(request)
    after = datetime.now(UTC)

    assert credentials.access_key_id.startswith("ASIA")
    assert credentials.secret_access_key
    assert credentials.session_token
    assert credentials.identity_id is None
    assert credentials.expiration.utcoffset() == timedelta(0)
    lifetime = timedelta(seconds=expected)
    assert before + lifetime - timedelta(seconds=1) <= credentials.expiration <= after + lifetime

    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleArn"] == aws.user_role_arn
    assert call["RoleSessionName"] == "corp-ada"
    assert call["SourceIdentity"] == "corp-ada"
    assert call["DurationSeconds"] == str(expected)
    assert sts_tags(call) == {USER_TAG: "corp-ada", "department": "Research"}


def test_the_clients_read_the_expiry_aws_writes_as_utc(aws: AwsWorld, clients: AwsClients) -> None:
    # STS writes ISO 8601 in XML, Cognito epoch seconds in JSON; botocore's own parser would
    # hand back dateutil's time zones
    before = datetime.now(UTC)
    assumed = clients.sts.assume_role(RoleArn=aws.user_role_arn, RoleSessionName="expiry")
    sts_expiry = assumed["Credentials"]["Expiration"]
    identity = clients.cognito_identity.get_id(
        IdentityPoolId=aws.identity_pool_id, Logins={GOOGLE: "google-id-token-9"}
    )
    got = clients.cognito_identity.get_credentials_for_identity(
        IdentityId=identity["IdentityId"], Logins={GOOGLE: "google-id-token-9"}
    )
    cognito_expiry = got["Credentials"]["Expiration"]
    assert sts_expiry.tzinfo is UTC
    assert cognito_expiry.tzinfo is UTC
    assert before < sts_expiry <= before + timedelta(hours=1, seconds=5)
    assert before < cognito_expiry <= before + timedelta(hours=1, seconds=5)


def test_provider_role_arn_wins_over_the_default(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    vendors["sts"].vend(request_for(config, "partner", "partner-7"))
    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleArn"] == partner_role_arn(aws)
    assert sts_tags(call) == {USER_TAG: "partner-7"}


def test_guest_credentials_last_the_providers_credential_ttl(
    aws: AwsWorld, config: BrokerConfig, vendors: dict[str, Vendor]
) -> None:
    vendors["sts"].vend(request_for(config, "guests", "guest-k3j9x"))
    [call] = aws.recorder.calls("AssumeRole")
    assert call["DurationSeconds"] == str(GUEST_TTL)
    assert call["RoleArn"] == aws.user_role_arn


@pytest.mark.parametrize(
    ("user_id", "session_name"),
    [
        ("corp-ada@example.com", "corp-ada@example.com"),
        (
            "corp-ada@example.com:42",
            "corp-ada@example.com-42-"
            + hashlib.sha256(b"corp-ada@example.com:42").hexdigest()[:16],
        ),
        (
            "corp-" + "x" * 52 + ":123:4",
            "corp-"
            + "x" * 35
            + "-"
            + hashlib.sha256(("corp-" + "x" * 52 + ":123:4").encode()).hexdigest()[:16],
        ),
    ],
)
def test_user_ids_become_valid_session_names_and_the_mapping_is_logged(
    aws: AwsWorld,
    config: BrokerConfig,
    vendors: dict[str, Vendor],
    caplog: pytest.LogCaptureFixture,
    user_id: str,
    session_name: str,
) -> None:
    caplog.set_level(logging.INFO, logger="chime_broker.vending")
    vendors["sts"].vend(request_for(config, "corp", user_id))

    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleSessionName"] == session_name
    assert call["SourceIdentity"] == session_name
    assert SESSION_NAME.fullmatch(session_name)
    assert sts_tags(call)[USER_TAG] == user_id
    logged = [getattr(record, "fields", {}) for record in caplog.records]
    assert any(
        fields.get("user_id") == user_id and fields.get("role_session_name") == session_name
        for fields in logged
    )


def test_ids_that_differ_only_in_replaced_characters_get_different_session_names() -> None:
    assert role_session_name("corp-a:b") != role_session_name("corp-a-b")
    assert role_session_name("corp-a-b") == "corp-a-b"


def test_session_names_outside_two_to_sixty_four_characters_are_hashed() -> None:
    long_id = "corp-" + "ü" * 70
    hashed = role_session_name(long_id)
    assert SESSION_NAME.fullmatch(hashed)
    assert hashed.startswith("corp-" + "-" * 35 + "-")
    assert role_session_name(long_id) == hashed
    assert role_session_name(long_id + "x") != hashed

    short = role_session_name("a")
    assert SESSION_NAME.fullmatch(short)
    assert short.startswith("a-")
    assert role_session_name("b") != short


# -- a cached identity that Cognito deleted ------------------------------------------------


def stubbed(aws: AwsWorld, clients: AwsClients, service: str) -> Iterator[Stubber]:
    # Stubber answers in place of AWS for what moto cannot produce; it still validates
    # every request against the real AWS model, so the parameters must be valid.
    client = aws.client(service)
    clients.install(service, client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def cognito_stub(aws: AwsWorld, clients: AwsClients) -> Iterator[Stubber]:
    yield from stubbed(aws, clients, "cognito-identity")


@pytest.fixture
def sts_stub(aws: AwsWorld, clients: AwsClients) -> Iterator[Stubber]:
    yield from stubbed(aws, clients, "sts")


def cognito_credentials(identity_id: str) -> dict[str, Any]:
    return {
        "IdentityId": identity_id,
        "Credentials": {
            "AccessKeyId": "ASIAEXAMPLE",
            "SecretKey": "secret",
            "SessionToken": "session",
            "Expiration": datetime.now(UTC) + timedelta(hours=1),
        },
    }


def test_a_deleted_cached_identity_is_resolved_again_once(
    aws: AwsWorld,
    config: BrokerConfig,
    vendors: dict[str, Vendor],
    cognito_stub: Stubber,
    store: Store,
) -> None:
    pool = aws.identity_pool_id
    old, new = f"{aws.region}:old-identity", f"{aws.region}:new-identity"
    logins = {GOOGLE: "token-2"}
    key = identity_cache_key("cognito", pool, GOOGLE, "108234")
    store.set(key, identity_record(old), 3600)

    cognito_stub.add_client_error(
        "get_credentials_for_identity",
        service_error_code="ResourceNotFoundException",
        service_message="Identity 'old-identity' not found.",
        http_status_code=400,
        expected_params={"IdentityId": old, "Logins": logins, "CustomRoleArn": aws.user_role_arn},
    )
    cognito_stub.add_response(
        "get_id", {"IdentityId": new}, {"IdentityPoolId": pool, "Logins": logins}
    )
    cognito_stub.add_response(
        "get_credentials_for_identity",
        cognito_credentials(new),
        {"IdentityId": new, "Logins": logins, "CustomRoleArn": aws.user_role_arn},
    )

    credentials = vendors["cognito"].vend(google_request(config, "108234", "token-2"))

    assert credentials.identity_id == new
    assert credentials.access_key_id == "ASIAEXAMPLE"
    assert store.get(key) == identity_record(new)


def test_a_deleted_developer_identity_is_resolved_again_once(
    aws: AwsWorld,
    config: BrokerConfig,
    vendors: dict[str, Vendor],
    cognito_stub: Stubber,
    store: Store,
) -> None:
    pool, developer = aws.identity_pool_id, aws.developer_provider_name
    old, new = f"{aws.region}:old-identity", f"{aws.region}:new-identity"
    key = identity_cache_key("cognito_developer", pool, developer, "okta-00u1abc")
    store.set(key, identity_record(old), 3600)
    params = {
        "IdentityPoolId": pool,
        "Logins": {developer: "okta-00u1abc"},
        "PrincipalTags": {USER_TAG: "okta-00u1abc"},
        "TokenDuration": TOKEN_DURATION,
    }
    cognito_stub.add_client_error(
        "get_open_id_token_for_developer_identity",
        service_error_code="ResourceNotFoundException",
        http_status_code=400,
        expected_params={**params, "IdentityId": old},
    )
    cognito_stub.add_response(
        "get_open_id_token_for_developer_identity",
        {"IdentityId": new, "Token": "cognito-token"},
        params,
    )
    cognito_stub.add_response(
        "get_credentials_for_identity",
        cognito_credentials(new),
        {"IdentityId": new, "Logins": {COGNITO_LOGIN_KEY: "cognito-token"}},
    )

    credentials = vendors["cognito_developer"].vend(request_for(config, "okta", "okta-00u1abc"))

    assert credentials.identity_id == new
    assert store.get(key) == identity_record(new)


# -- error translation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aws_code", "broker_error", "status"),
    [
        ("NotAuthorizedException", errors.InvalidToken, 401),
        ("TooManyRequestsException", errors.RateLimited, 429),
        ("ResourceNotFoundException", errors.UpstreamError, 502),
        ("InvalidIdentityPoolConfigurationException", errors.UpstreamError, 502),
    ],
)
def test_cognito_errors_become_broker_errors(
    aws: AwsWorld,
    config: BrokerConfig,
    vendors: dict[str, Vendor],
    cognito_stub: Stubber,
    aws_code: str,
    broker_error: type[errors.BrokerError],
    status: int,
) -> None:
    cognito_stub.add_client_error(
        "get_id",
        service_error_code=aws_code,
        service_message="Invalid login token. Token signature invalid: secret-detail",
        http_status_code=400,
        expected_params={"IdentityPoolId": aws.identity_pool_id, "Logins": {GOOGLE: "bad"}},
    )
    with pytest.raises(broker_error) as raised:
        vendors["cognito"].vend(google_request(config, "108234", "bad"))

    error = raised.value
    assert type(error) is broker_error
    assert error.status == status
    assert "secret-detail" not in error.detail
    assert error.log_detail is not None
    assert "secret-detail" in error.log_detail
    assert aws_code in error.log_detail
    if broker_error is errors.RateLimited:
        assert error.code == "rate_limited"
        assert error.retry_after is not None
        assert error.retry_after in range(1, 6)
    else:
        assert error.retry_after is None


def test_sts_access_denied_names_the_trust_policy(
    config: BrokerConfig, vendors: dict[str, Vendor], sts_stub: Stubber
) -> None:
    sts_stub.add_client_error(
        "assume_role",
        service_error_code="AccessDenied",
        service_message="User: arn:aws:sts::123456789012:assumed-role/Server is not authorized",
        http_status_code=403,
    )
    with pytest.raises(errors.UpstreamError) as raised:
        vendors["sts"].vend(request_for(config, "corp", "corp-ada"))

    error = raised.value
    assert (error.code, error.status) == ("upstream_error", 502)
    assert "trust policy" in error.detail
    assert "chime-broker policies" in error.detail
    assert "123456789012" not in error.detail
    assert error.log_detail is not None
    assert "is not authorized" in error.log_detail


def test_sts_throttling_is_rate_limited(
    config: BrokerConfig, vendors: dict[str, Vendor], sts_stub: Stubber
) -> None:
    sts_stub.add_client_error("assume_role", service_error_code="Throttling", http_status_code=400)
    with pytest.raises(errors.RateLimited) as raised:
        vendors["sts"].vend(request_for(config, "corp", "corp-ada"))
    assert raised.value.status == 429
    assert raised.value.retry_after is not None


def install_without_retries(clients: AwsClients, service: str, *, read_timeout: float) -> None:
    """A real client (endpoint from the environment) that tries once."""
    clients.install(
        service,
        boto3.client(
            service,
            region_name="us-east-1",
            config=Config(
                connect_timeout=2,
                read_timeout=read_timeout,
                retries={"total_max_attempts": 1},
            ),
        ),
    )


def test_unreachable_aws_is_upstream_unavailable(
    aws: AwsWorld,
    config: BrokerConfig,
    clients: AwsClients,
    vendors: dict[str, Vendor],
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    install_without_retries(clients, "sts", read_timeout=5)
    install_without_retries(clients, "cognito-identity", read_timeout=5)

    with pytest.raises(errors.UpstreamUnavailable) as raised:
        vendors["sts"].vend(request_for(config, "corp", "corp-ada"))
    assert (raised.value.code, raised.value.status) == ("upstream_unavailable", 503)

    with pytest.raises(errors.UpstreamUnavailable):
        vendors["cognito"].vend(google_request(config, "108234", "token"))
    assert aws.recorder.operations() == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback server that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


def test_aws_that_does_not_answer_is_upstream_timeout(
    config: BrokerConfig,
    clients: AwsClients,
    vendors: dict[str, Vendor],
    silent_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent_port}")
    install_without_retries(clients, "cognito-identity", read_timeout=0.5)

    with pytest.raises(errors.UpstreamTimeout) as raised:
        vendors["cognito_developer"].vend(request_for(config, "okta", "okta-00u1abc"))
    assert (raised.value.code, raised.value.status) == ("upstream_timeout", 504)
