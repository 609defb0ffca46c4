"""POST /v1/guest end to end: invites signed with a shared secret or by the local OIDC
provider's keys (served from its JWKS URL), open guests, and the moto server whose
recorder shows exactly what the broker sent to STS and Cognito."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from identity.providers.guest import MAX_INVITE_LIFETIME, OPEN_GUESTS_PER_MINUTE
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.recorder import sts_tags

INVITE_SECRET = "meeting-app-invite-secret-0123456789abcdef"
INVITE_ISSUER = "https://meet.example.chat"
AUDIENCE = "chime-broker"
GUEST_TTL = 1200
GUEST_ID = re.compile(r"guest-[0-9a-f]{32}")
NOW = int(time.time())


def invited_guests(**overrides: Any) -> dict[str, Any]:
    """Guests with invites signed by the meeting app's backend with a shared secret."""
    return {
        "name": "guests",
        "kind": "guest",
        "exchange": "sts",
        "invite": {"issuer": INVITE_ISSUER, "audience": AUDIENCE, "shared_secret": INVITE_SECRET},
        "credential_ttl": GUEST_TTL,
        **overrides,
    }


def jwks_guests(idp: DevIdentityProvider) -> dict[str, Any]:
    """Guests with invites signed by keys the app publishes at a JWKS URL; the invite's
    ``sub`` (the app's attendee id) makes the user id, as the admin's template says."""
    return {
        "name": "meeting",
        "kind": "guest",
        "exchange": "sts",
        "invite": {"issuer": idp.issuer, "audience": AUDIENCE, "jwks_url": idp.url("/jwks")},
        "map": {"user_id": "attendee-{sub}"},
    }


def open_guests() -> dict[str, Any]:
    return {
        "name": "lobby",
        "kind": "guest",
        "exchange": "sts",
        "allow_open_guests": True,
        "map": {"user_id": "lobby-{random}"},
    }


def kiosk_guests() -> dict[str, Any]:
    return {
        "name": "kiosk",
        "kind": "guest",
        "exchange": "cognito_developer",
        "invite": {"issuer": INVITE_ISSUER, "audience": AUDIENCE, "shared_secret": INVITE_SECRET},
        "map": {"user_id": "kiosk-{random}"},
    }


def invite(
    claims: dict[str, Any] | None = None,
    *,
    omit: tuple[str, ...] = (),
    secret: str = INVITE_SECRET,
    lifetime: int = 600,
) -> str:
    """An invite as the meeting app's backend signs it (PyJWT, HS256)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": INVITE_ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        **(claims or {}),
    }
    for name in omit:
        payload.pop(name)
    return jwt.encode(payload, secret, algorithm="HS256")


def idp_invite(
    idp: DevIdentityProvider, claims: dict[str, Any] | None = None, **options: Any
) -> str:
    """An invite signed with the local OIDC provider's current key (served at its JWKS)."""
    options.setdefault("audience", AUDIENCE)
    return idp.mint_id_token(
        {"sub": "attendee-7", "jti": uuid.uuid4().hex, **(claims or {})}, **options
    )


@pytest.fixture
def client(aws: AwsWorld, oidc_provider: DevIdentityProvider, make_app: MakeApp) -> FlaskClient:
    providers = [
        invited_guests(),
        jwks_guests(oidc_provider),
        open_guests(),
        kiosk_guests(),
        {
            "name": "corp",
            "kind": "oidc",
            "issuer": oidc_provider.issuer,
            "client_id": "corp-app",
            "exchange": "sts",
            "map": {"user_id": "corp-{sub}"},
        },
    ]
    return make_app(providers=providers).test_client()


def post_guest(client: FlaskClient, body: dict[str, Any], **kwargs: Any) -> Any:
    return client.post("/v1/guest", json=body, **kwargs)


def assert_refused(response: Any, status: int, code: str, aws: AwsWorld) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code
    assert "credentials" not in body and "broker_session" not in body
    assert aws.recorder.requests() == []


# -- admitted guests ---------------------------------------------------------------------


def test_an_invited_guest_gets_credentials_for_a_fresh_user_of_its_own(
    aws: AwsWorld, client: FlaskClient
) -> None:
    response = post_guest(client, {"provider": "guests", "invite": invite({"name": "Ada"})})

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"].startswith("no-store")
    body = response.get_json()
    user_id = body["user_id"]
    assert GUEST_ID.fullmatch(user_id)
    assert body["display_name"] == "Ada"
    assert body["app_instance_user_arn"] == f"{aws.app_instance_arn}/user/{user_id}"
    assert body["identity_id"] is None
    assert body["broker_session"]["token"].startswith("cbs_")
    assert set(body["credentials"]) == {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "expiration",
    }
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert sts_tags(assume_role) == {aws.user_tag: user_id}
    assert assume_role["RoleArn"] == aws.user_role_arn
    assert assume_role["SourceIdentity"] == user_id
    # credential_ttl, not aws.sts.duration_seconds (3600), and shorter than the session.
    assert int(assume_role["DurationSeconds"]) == GUEST_TTL

    other = post_guest(client, {"provider": "guests", "invite": invite({"name": "Ada"})})
    assert other.status_code == 200
    assert other.get_json()["user_id"] != user_id


def test_an_invite_from_a_jwks_url_works_and_its_sub_feeds_the_admins_template(
    aws: AwsWorld, client: FlaskClient, oidc_provider: DevIdentityProvider
) -> None:
    response = post_guest(
        client, {"provider": "meeting", "invite": idp_invite(oidc_provider, {"name": "Grace"})}
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["user_id"] == "attendee-attendee-7"
    assert body["display_name"] == "Grace"
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert sts_tags(assume_role) == {aws.user_tag: "attendee-attendee-7"}


def test_a_guest_on_cognito_developer_gets_the_user_tag_from_the_broker(
    aws: AwsWorld, client: FlaskClient
) -> None:
    response = post_guest(client, {"provider": "kiosk", "invite": invite()})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    user_id = body["user_id"]
    assert re.fullmatch(r"kiosk-[0-9a-f]{32}", user_id)
    assert body["identity_id"].startswith(f"{aws.region}:")
    [token_call] = aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")
    assert token_call["Logins"] == {aws.developer_provider_name: user_id}
    assert token_call["PrincipalTags"] == {aws.user_tag: user_id}


def test_the_invites_name_claim_wins_over_the_requested_display_name(client: FlaskClient) -> None:
    response = post_guest(
        client,
        {
            "provider": "guests",
            "display_name": "Mallory the Admin",
            "invite": invite({"name": "Ada Lovelace"}),
        },
    )
    assert response.status_code == 200
    assert response.get_json()["display_name"] == "Ada Lovelace"


def test_without_a_name_claim_the_requested_name_is_cleaned_and_capped(client: FlaskClient) -> None:
    requested = "Ada\x00\nLove\u202elace\x1b" + "x" * 300
    response = post_guest(
        client, {"provider": "guests", "display_name": requested, "invite": invite()}
    )

    assert response.status_code == 200
    name = response.get_json()["display_name"]
    assert name.startswith("Ada Lovelace ")
    assert len(name) == 100
    assert not any(ord(ch) < 0x20 or ch == "\u202e" for ch in name)


def test_without_any_name_a_guest_is_shown_by_its_user_id(client: FlaskClient) -> None:
    body = post_guest(
        client, {"provider": "guests", "display_name": "\x00\x07", "invite": invite()}
    ).get_json()
    assert body["display_name"] == body["user_id"]


def test_open_guests_need_no_invite(aws: AwsWorld, client: FlaskClient) -> None:
    response = post_guest(client, {"provider": "lobby", "display_name": "Visitor"})

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert re.fullmatch(r"lobby-[0-9a-f]{32}", body["user_id"])
    assert body["display_name"] == "Visitor"
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert sts_tags(assume_role) == {aws.user_tag: body["user_id"]}


def test_in_demo_mode_an_invite_is_optional(
    aws: AwsWorld, oidc_provider: DevIdentityProvider, make_app: MakeApp
) -> None:
    client = make_app(
        mode="demo",
        service__public_url="http://127.0.0.1:9",
        providers=[jwks_guests(oidc_provider) | {"map": {}}],
    ).test_client()

    response = post_guest(client, {"provider": "meeting", "display_name": "Demo guest"})

    assert response.status_code == 200, response.get_json()
    assert GUEST_ID.fullmatch(response.get_json()["user_id"])


# -- refusals ----------------------------------------------------------------------------


def _with_header(token: str, **fields: Any) -> str:
    head, payload, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header.update(fields)
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}.{signature}"


SHARED_SECRET_REFUSALS: dict[str, Callable[[], str]] = {
    "expired": lambda: invite({"iat": NOW - 7200, "exp": NOW - 3600}),
    "forged (another secret)": lambda: invite(secret="not-the-meeting-apps-secret-0123456789"),
    "alg none": lambda: _with_header(invite(), alg="none"),
    "wrong aud": lambda: invite({"aud": "some-other-service"}),
    "wrong iss": lambda: invite({"iss": "https://evil.example"}),
    "no jti": lambda: invite(omit=("jti",)),
    "no exp": lambda: invite(omit=("exp",)),
    "no iat": lambda: invite(omit=("iat",)),
    "empty jti": lambda: invite({"jti": ""}),
    "lives longer than a day": lambda: invite(lifetime=MAX_INVITE_LIFETIME + 3600),
    "not yet valid": lambda: invite({"nbf": NOW + 3600}),
    "garbage": lambda: "not-an-invite",
}


@pytest.mark.parametrize("case", list(SHARED_SECRET_REFUSALS))
def test_bad_shared_secret_invites_are_refused_before_any_aws_call(
    case: str, aws: AwsWorld, client: FlaskClient
) -> None:
    response = post_guest(client, {"provider": "guests", "invite": SHARED_SECRET_REFUSALS[case]()})
    assert_refused(response, 401, "invalid_token", aws)


JWKS_REFUSALS: dict[str, Callable[[DevIdentityProvider], str]] = {
    "alg none": lambda idp: _with_header(idp_invite(idp), alg="none"),
    "wrong aud": lambda idp: idp_invite(idp, audience="some-other-service"),
    "wrong iss": lambda idp: idp_invite(idp, {"iss": "https://evil.example"}),
    "unknown kid": lambda idp: idp_invite(idp, kid="no-such-key"),
    "HS256 with the public key as secret": lambda idp: idp_invite(
        idp, alg="HS256", key=idp.signing_key_pem()
    ),
    "expired": lambda idp: idp_invite(idp, {"iat": NOW - 7200, "exp": NOW - 3600}),
    "no jti": lambda idp: idp_invite(idp, omit=["jti"]),
}


@pytest.mark.parametrize("case", list(JWKS_REFUSALS))
def test_bad_jwks_invites_are_refused_before_any_aws_call(
    case: str, aws: AwsWorld, client: FlaskClient, oidc_provider: DevIdentityProvider
) -> None:
    response = post_guest(
        client, {"provider": "meeting", "invite": JWKS_REFUSALS[case](oidc_provider)}
    )
    assert_refused(response, 401, "invalid_token", aws)


def test_an_invite_is_accepted_once(aws: AwsWorld, client: FlaskClient) -> None:
    token = invite({"name": "Ada"})
    assert post_guest(client, {"provider": "guests", "invite": token}).status_code == 200
    aws.recorder.reset()

    replayed = post_guest(client, {"provider": "guests", "invite": token})

    assert_refused(replayed, 401, "invalid_token", aws)
    assert replayed.get_json()["detail"] == "invite already used"


def test_an_invite_is_accepted_once_across_workers_sharing_a_store(
    aws: AwsWorld, tmp_path: Path, make_config: MakeConfig, make_app: MakeApp
) -> None:
    config = make_config(providers=[invited_guests()], store=f"sqlite:///{tmp_path}/state.db")
    first, second = (make_app(config).test_client() for _ in range(2))
    token = invite()
    assert post_guest(first, {"provider": "guests", "invite": token}).status_code == 200
    aws.recorder.reset()

    assert_refused(
        post_guest(second, {"provider": "guests", "invite": token}), 401, "invalid_token", aws
    )


def test_an_invite_used_at_one_provider_is_spent_at_every_provider_that_trusts_it(
    aws: AwsWorld, client: FlaskClient
) -> None:
    token = invite()
    assert post_guest(client, {"provider": "guests", "invite": token}).status_code == 200
    aws.recorder.reset()
    # The kiosk trusts the same issuer and secret.
    assert_refused(
        post_guest(client, {"provider": "kiosk", "invite": token}), 401, "invalid_token", aws
    )


def test_an_invite_sent_to_a_provider_that_takes_none_is_refused(
    aws: AwsWorld, client: FlaskClient
) -> None:
    response = post_guest(client, {"provider": "lobby", "invite": invite()})
    assert_refused(response, 400, "invalid_request", aws)


def test_a_missing_invite_is_refused(aws: AwsWorld, client: FlaskClient) -> None:
    response = post_guest(client, {"provider": "guests", "display_name": "Mallory"})
    assert_refused(response, 401, "invalid_token", aws)


def test_open_guests_are_rate_limited_per_client_address(
    aws: AwsWorld, make_app: MakeApp, clock: FakeClock
) -> None:
    # A clock that stands still keeps every request inside one rate-limit minute.
    client = make_app(providers=[open_guests()], clock=clock).test_client()
    for _ in range(OPEN_GUESTS_PER_MINUTE):
        assert post_guest(client, {"provider": "lobby"}).status_code == 200
    aws.recorder.reset()

    refused = post_guest(client, {"provider": "lobby"})

    assert_refused(refused, 429, "rate_limited", aws)
    assert int(refused.headers["Retry-After"]) in range(1, 61)
    elsewhere = post_guest(
        client, {"provider": "lobby"}, environ_base={"REMOTE_ADDR": "192.0.2.44"}
    )
    assert elsewhere.status_code == 200


@pytest.mark.parametrize("field", ["user_id", "app_instance_user_arn", "tags", "random"])
def test_a_guest_cannot_choose_its_user_id(field: str, aws: AwsWorld, client: FlaskClient) -> None:
    body = {"provider": "guests", "invite": invite(), field: "admin"}
    assert_refused(post_guest(client, body), 400, "invalid_request", aws)


def test_what_a_guest_sends_never_becomes_its_user_id(client: FlaskClient) -> None:
    body = post_guest(client, {"provider": "lobby", "display_name": "admin"}).get_json()
    assert re.fullmatch(r"lobby-[0-9a-f]{32}", body["user_id"])


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"provider": "corp", "invite": "x"}, 400, "invalid_request"),
        ({"provider": "nobody"}, 404, "unknown_provider"),
        ({"provider": "lobby", "display_name": "x" * 2000}, 400, "invalid_request"),
        ({"provider": "lobby", "display_name": 7}, 400, "invalid_request"),
        ({"display_name": "Ada"}, 400, "invalid_request"),
    ],
)
def test_malformed_guest_requests_are_refused(
    body: dict[str, Any], status: int, code: str, aws: AwsWorld, client: FlaskClient
) -> None:
    assert_refused(post_guest(client, body), status, code, aws)
