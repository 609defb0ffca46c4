"""App instance user provisioning and the messaging session endpoint, through the HTTP API.

moto has no Chime backend, so the broker runs in-process (Flask test client) with
``botocore.stub.Stubber`` on the injected chime-sdk-identity and chime-sdk-messaging
clients: Stubber checks every call's parameters against the real AWS API model and answers
in place of AWS.  STS still is the moto server, whose recorder shows what was vended.  A
call the test did not queue fails inside the broker and turns the response into a 502,
so "called once" is asserted by every later login succeeding.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from botocore.stub import Stubber
from flask.testing import FlaskClient

from identity.aws import AwsClients
from identity.chime import PERMISSION_DETAIL, client_request_token, provisioning_key
from identity.store import Store
from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.records import UNREADABLE, spoil

INVITE_SECRET = "meeting-app-invite-secret-0123456789abcdef"
INVITE_ISSUER = "https://meet.example.chat"
CLIENT_ID = "corp-app"
EXPIRATION_DAYS = 2
ENDPOINT_URL = "wss://node001.ue1.ws-messaging.chime.aws"


@dataclass
class Rig:
    """The broker under test and the Stubbers standing in for Chime."""

    client: FlaskClient
    identity: Stubber
    messaging: Stubber
    app_instance_arn: str

    def user_arn(self, user_id: str) -> str:
        return f"{self.app_instance_arn}/user/{user_id}"

    def create_params(self, user_id: str, name: str, *, expires: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = {
            "AppInstanceArn": self.app_instance_arn,
            "AppInstanceUserId": user_id,
            "Name": name,
            "ClientRequestToken": client_request_token(self.app_instance_arn, user_id),
        }
        if expires:
            params["ExpirationSettings"] = {
                "ExpirationDays": EXPIRATION_DAYS,
                "ExpirationCriterion": "CREATED_TIMESTAMP",
            }
        return params

    def expect_create(self, user_id: str, name: str, *, expires: bool = False) -> None:
        self.identity.add_response(
            "create_app_instance_user",
            {"AppInstanceUserArn": self.user_arn(user_id)},
            self.create_params(user_id, name, expires=expires),
        )

    def expect_create_error(
        self, user_id: str, name: str, code: str, status: int, *, expires: bool = False
    ) -> None:
        self.identity.add_client_error(
            "create_app_instance_user",
            service_error_code=code,
            service_message=f"{code} from the test",
            http_status_code=status,
            expected_params=self.create_params(user_id, name, expires=expires),
        )

    def expect_describe(
        self,
        user_id: str,
        name: str,
        *,
        metadata: str = "",
        created: datetime | None = None,
        expiration_days: int | None = None,
    ) -> None:
        found: dict[str, Any] = {
            "AppInstanceUserArn": self.user_arn(user_id),
            "Name": name,
            "Metadata": metadata,
            "CreatedTimestamp": created or datetime.now(UTC) - timedelta(days=30),
        }
        if expiration_days is not None:
            found["ExpirationSettings"] = {
                "ExpirationDays": expiration_days,
                "ExpirationCriterion": "CREATED_TIMESTAMP",
            }
        self.identity.add_response(
            "describe_app_instance_user",
            {"AppInstanceUser": found},
            {"AppInstanceUserArn": self.user_arn(user_id)},
        )

    def expect_update(self, user_id: str, name: str, metadata: str) -> None:
        self.identity.add_response(
            "update_app_instance_user",
            {"AppInstanceUserArn": self.user_arn(user_id)},
            {"AppInstanceUserArn": self.user_arn(user_id), "Name": name, "Metadata": metadata},
        )


@pytest.fixture
def make_rig(
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    make_config: MakeConfig,
    make_app: MakeApp,
) -> Iterator[Callable[..., Rig]]:
    oidc_provider.register_client(CLIENT_ID)
    stubbers: list[Stubber] = []

    def build(*, provision: bool = True, endpoint: bool = False, store: Store | None = None) -> Rig:
        config = make_config(
            chime__provision_users=provision,
            chime__messaging_endpoint=endpoint,
            providers=[
                {
                    "name": "corp",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": CLIENT_ID,
                    "exchange": "sts",
                    "map": {"user_id": "corp-{sub}", "display_name": "{name}"},
                },
                {
                    "name": "guests",
                    "kind": "guest",
                    "exchange": "sts",
                    "invite": {
                        "issuer": INVITE_ISSUER,
                        "audience": "chime-broker",
                        "shared_secret": INVITE_SECRET,
                    },
                    "user_expiration_days": EXPIRATION_DAYS,
                    "map": {"user_id": "guest-{sub}"},
                },
            ],
        )
        clients = AwsClients(config, max_pool_connections=4)
        # Stubber, not moto: moto has no Chime backend (DESIGN §6); Stubber still validates
        # every request against the real chime-sdk-identity / chime-sdk-messaging models.
        identity_client = aws.client("chime-sdk-identity")
        messaging_client = aws.client("chime-sdk-messaging")
        clients.install("chime-sdk-identity", identity_client)
        clients.install("chime-sdk-messaging", messaging_client)
        identity, messaging = Stubber(identity_client), Stubber(messaging_client)
        for stubber in (identity, messaging):
            stubber.activate()
            stubbers.append(stubber)
        app = make_app(config, clients=clients, store=store)
        return Rig(app.test_client(), identity, messaging, aws.app_instance_arn)

    yield build
    for stubber in stubbers:
        stubber.deactivate()


def login(rig: Rig, idp: DevIdentityProvider, sub: str, name: str) -> Any:
    token = idp.mint_id_token(
        {"sub": sub, "name": name, "jti": uuid.uuid4().hex}, audience=CLIENT_ID
    )
    return rig.client.post("/v1/token", json={"provider": "corp", "id_token": token})


def guest_login(rig: Rig, sub: str, name: str, token: str | None = None) -> Any:
    now = int(time.time())
    token = token or jwt.encode(
        {
            "iss": INVITE_ISSUER,
            "aud": "chime-broker",
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "sub": sub,
            "name": name,
        },
        INVITE_SECRET,
        algorithm="HS256",
    )
    return rig.client.post("/v1/guest", json={"provider": "guests", "invite": token})


def assert_ok(response: Any, user_id: str, name: str) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    assert body["user_id"] == user_id
    assert body["display_name"] == name
    return body


# -- provisioning ------------------------------------------------------------------------


def test_the_first_login_creates_the_user_and_later_logins_do_not(
    aws: AwsWorld, oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create("corp-ada", "Ada Lovelace")

    for _ in range(4):
        assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")

    rig.identity.assert_no_pending_responses()
    # Later logins reuse the user's cached credentials: one vend in all.
    assert len(aws.recorder.calls("AssumeRole")) == 1


def test_each_user_is_created_once(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create("corp-ada", "Ada Lovelace")
    rig.expect_create("corp-grace", "Grace Hopper")

    for _ in range(2):
        assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")
        assert_ok(login(rig, oidc_provider, "grace", "Grace Hopper"), "corp-grace", "Grace Hopper")

    rig.identity.assert_no_pending_responses()


def test_a_conflict_counts_as_success(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create_error("corp-ada", "Ada Lovelace", "ConflictException", 409)
    rig.expect_describe("corp-ada", "Ada Lovelace")

    assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")
    assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")

    rig.identity.assert_no_pending_responses()


def test_an_existing_user_with_another_name_is_renamed_on_conflict(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create_error("corp-ada", "Ada Lovelace", "ConflictException", 409)
    rig.expect_describe("corp-ada", "Ada Byron", metadata='{"team":"engines"}')
    rig.expect_update("corp-ada", "Ada Lovelace", '{"team":"engines"}')

    assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")
    assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")

    rig.identity.assert_no_pending_responses()


def test_a_changed_display_name_is_pushed_once_keeping_the_apps_metadata(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create("corp-ada", "Ada Byron")
    rig.expect_describe("corp-ada", "Ada Byron", metadata='{"avatar":"ada.png"}')
    rig.expect_update("corp-ada", "Ada Lovelace", '{"avatar":"ada.png"}')

    assert_ok(login(rig, oidc_provider, "ada", "Ada Byron"), "corp-ada", "Ada Byron")
    for _ in range(3):
        assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")

    rig.identity.assert_no_pending_responses()


def test_a_guest_user_is_created_to_expire_with_the_invites_name(
    aws: AwsWorld, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create("guest-attendee-9", "Grace", expires=True)

    assert_ok(guest_login(rig, "attendee-9", "Grace"), "guest-attendee-9", "Grace")
    assert_ok(guest_login(rig, "attendee-9", "Grace"), "guest-attendee-9", "Grace")

    rig.identity.assert_no_pending_responses()
    assert len(aws.recorder.calls("AssumeRole")) == 1  # the second reuses the first's


@pytest.mark.parametrize("how", [*UNREADABLE, "bare digest"])
def test_a_user_remembered_in_a_form_this_version_does_not_read_is_provisioned_again(
    how: str,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    make_rig: Callable[..., Rig],
    local_store: Store,
) -> None:
    rig = make_rig(store=local_store)
    rig.expect_create("corp-ada", "Ada Lovelace")
    assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")
    key = provisioning_key(aws.app_instance_arn, "corp-ada")
    remembered = local_store.get(key)
    assert remembered is not None
    if how == "bare digest":
        spoiled = hashlib.sha256(b"Ada Lovelace").hexdigest().encode()
    else:
        spoiled = spoil(remembered, how, field="name_sha256")
    local_store.set(key, spoiled, 3600)
    rig.expect_create_error("corp-ada", "Ada Lovelace", "ConflictException", 409)
    rig.expect_describe("corp-ada", "Ada Lovelace")

    for _ in range(2):
        assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")

    rig.identity.assert_no_pending_responses()


def test_a_guest_user_about_to_expire_is_not_remembered(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    almost_expired = datetime.now(UTC) - timedelta(days=EXPIRATION_DAYS, minutes=-30)
    rig.expect_create_error("guest-attendee-9", "Grace", "ConflictException", 409, expires=True)
    rig.expect_describe(
        "guest-attendee-9", "Grace", created=almost_expired, expiration_days=EXPIRATION_DAYS
    )
    # Chime deletes it within the hour: the next login must ask again.
    rig.expect_create("guest-attendee-9", "Grace", expires=True)

    assert_ok(guest_login(rig, "attendee-9", "Grace"), "guest-attendee-9", "Grace")
    assert_ok(guest_login(rig, "attendee-9", "Grace"), "guest-attendee-9", "Grace")

    rig.identity.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ServiceFailureException", 500),
        ("ForbiddenException", 403),
        ("BadRequestException", 400),
        ("ResourceLimitExceededException", 400),
    ],
)
def test_a_failing_create_yields_a_502_and_no_credentials(
    code: str,
    status: int,
    aws: AwsWorld,
    oidc_provider: DevIdentityProvider,
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.expect_create_error("corp-ada", "Ada Lovelace", code, status)

    response = login(rig, oidc_provider, "ada", "Ada Lovelace")

    assert response.status_code == 502, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "upstream_error"
    assert "credentials" not in body and "broker_session" not in body
    if code == "ForbiddenException":
        assert body["detail"] == PERMISSION_DETAIL
    rig.identity.assert_no_pending_responses()
    assert aws.recorder.requests() == []


def test_chime_throttling_is_a_429_with_retry_after_and_no_credentials(
    aws: AwsWorld, oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig()
    rig.expect_create_error("corp-ada", "Ada Lovelace", "ThrottledClientException", 429)

    response = login(rig, oidc_provider, "ada", "Ada Lovelace")

    assert response.status_code == 429, response.get_json()
    assert response.get_json()["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) in range(1, 6)
    assert "credentials" not in response.get_json()
    rig.identity.assert_no_pending_responses()
    assert aws.recorder.requests() == []


def test_a_guest_whose_provisioning_failed_may_use_its_invite_again(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.expect_create_error(
        "guest-attendee-9", "Grace", "ServiceUnavailableException", 503, expires=True
    )
    rig.expect_create("guest-attendee-9", "Grace", expires=True)
    now = int(time.time())
    invite = jwt.encode(
        {
            "iss": INVITE_ISSUER,
            "aud": "chime-broker",
            "iat": now,
            "exp": now + 600,
            "jti": "one-invite",
            "sub": "attendee-9",
            "name": "Grace",
        },
        INVITE_SECRET,
        algorithm="HS256",
    )

    assert guest_login(rig, "attendee-9", "Grace", invite).status_code == 503
    assert_ok(guest_login(rig, "attendee-9", "Grace", invite), "guest-attendee-9", "Grace")
    replayed = guest_login(rig, "attendee-9", "Grace", invite)

    assert replayed.status_code == 401
    assert replayed.get_json()["code"] == "invalid_token"
    rig.identity.assert_no_pending_responses()


def test_without_provision_users_chime_is_never_called(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(provision=False)
    body = assert_ok(login(rig, oidc_provider, "ada", "Ada Lovelace"), "corp-ada", "Ada Lovelace")
    assert "messaging_session_endpoint" not in body


# -- messaging endpoint ------------------------------------------------------------------


def test_every_credentials_body_carries_the_messaging_endpoint_fetched_once(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(provision=False, endpoint=True)
    rig.messaging.add_response(
        "get_messaging_session_endpoint", {"Endpoint": {"Url": ENDPOINT_URL}}, {}
    )

    bodies = [
        assert_ok(login(rig, oidc_provider, "ada", "Ada"), "corp-ada", "Ada"),
        assert_ok(login(rig, oidc_provider, "grace", "Grace"), "corp-grace", "Grace"),
        assert_ok(guest_login(rig, "attendee-9", "Guest"), "guest-attendee-9", "Guest"),
    ]

    assert [body["messaging_session_endpoint"] for body in bodies] == [ENDPOINT_URL] * 3
    rig.messaging.assert_no_pending_responses()


def test_an_unavailable_messaging_endpoint_is_an_upstream_error(
    oidc_provider: DevIdentityProvider, make_rig: Callable[..., Rig]
) -> None:
    rig = make_rig(provision=False, endpoint=True)
    rig.messaging.add_client_error(
        "get_messaging_session_endpoint",
        service_error_code="ServiceFailureException",
        http_status_code=500,
        expected_params={},
    )

    response = login(rig, oidc_provider, "ada", "Ada")

    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "upstream_error"
    assert "credentials" not in body
    rig.messaging.assert_no_pending_responses()
