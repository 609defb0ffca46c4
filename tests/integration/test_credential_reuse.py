"""Credentials reused per user across sessions: a returning user's app launches and refreshes
within the hour cost no Cognito or STS call, no two users ever share credentials or an
identity, and no session receives credentials that outlive it.

Against the moto server; for the Cognito modes through the pool proxy, which gives moto's
90-second Cognito credentials the hour that Cognito's own have."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fixtures.apps import MakeApp
from tests.fixtures.pool_proxy import PoolProxy
from tests.fixtures.recorder import sts_tags

CLIENT_ID = "mobile-app"
USERS = 16
LAUNCHES = 3
REFRESHES = 2
VENDING_CALLS = (
    "GetId",
    "GetCredentialsForIdentity",
    "GetOpenIdTokenForDeveloperIdentity",
    "AssumeRole",
)


def corp(idp: Any, exchange: str, *, lifetime: str = "8h", groups: bool = False) -> dict[str, Any]:
    """``make_app`` overrides: the local IdP as ``corp``, vending through ``exchange``."""
    mapping: dict[str, Any] = {"user_id": "{sub}" if exchange == "cognito" else "corp-{sub}"}
    if groups:
        mapping["tags"] = {"team": "{team}"}
    return {
        "aws__sts__duration_seconds": 3600,
        "service__session_lifetime": lifetime,
        "providers": [
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": CLIENT_ID,
                "exchange": exchange,
                "map": mapping,
            }
        ],
    }


def launch(client: FlaskClient, idp: Any, sub: str, **claims: Any) -> dict[str, Any]:
    """One start of the mobile app: a fresh id token exchanged for a new session."""
    token = idp.mint_id_token({"sub": sub, **claims}, audience=CLIENT_ID, lifetime=3600)
    response = client.post("/v1/token", json={"provider": "corp", "id_token": token})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def refresh(client: FlaskClient, session: str) -> dict[str, Any]:
    response = client.post("/v1/credentials", headers={"Authorization": f"Bearer {session}"})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def vending_calls(aws: Any) -> list[str | None]:
    return [op for op in aws.recorder.operations() if op in VENDING_CALLS]


@pytest.fixture
def cognito_hour(pool_aws: PoolProxy) -> PoolProxy:
    pool_aws.credential_seconds = 3600
    return pool_aws


@pytest.mark.parametrize("exchange", ["sts", "cognito_developer", "cognito"])
def test_returning_users_cost_no_aws_call_within_the_hour(
    exchange: str,
    aws: Any,
    oidc_provider: Any,
    make_app: MakeApp,
    request: pytest.FixtureRequest,
) -> None:
    if exchange != "sts":
        request.getfixturevalue("cognito_hour")
    oidc_provider.register_client(CLIENT_ID)
    client = make_app(**corp(oidc_provider, exchange)).test_client()
    subs = [f"user{n:02d}" for n in range(USERS)]

    first = {sub: launch(client, oidc_provider, sub) for sub in subs}
    assert len(vending_calls(aws)) >= USERS
    aws.recorder.reset()

    seen: dict[str, set[tuple[str, str | None]]] = {sub: set() for sub in subs}
    for _ in range(LAUNCHES):
        for sub in subs:
            grant = launch(client, oidc_provider, sub)
            assert grant["user_id"] == first[sub]["user_id"]
            for _ in range(REFRESHES):
                again = refresh(client, grant["broker_session"]["token"])
                assert again["credentials"] == grant["credentials"]
            seen[sub].add((grant["credentials"]["access_key_id"], grant["identity_id"]))

    assert vending_calls(aws) == []
    # Each user kept their own credentials (and identity); no two users share either.
    for sub in subs:
        assert seen[sub] == {
            (first[sub]["credentials"]["access_key_id"], first[sub]["identity_id"])
        }
    keys = [first[sub]["credentials"]["access_key_id"] for sub in subs]
    assert len(set(keys)) == USERS
    if exchange != "sts":
        identities = [first[sub]["identity_id"] for sub in subs]
        assert None not in identities and len(set(identities)) == USERS


def test_a_session_shorter_than_the_cached_credentials_is_vended_its_own(
    aws: Any, oidc_provider: Any, make_app: MakeApp, local_store: Any
) -> None:
    """A broker whose sessions last 8 h caches an hour of credentials; one whose sessions
    last 20 minutes, on the same store, never hands those out: its session gets credentials
    that end with it."""
    oidc_provider.register_client(CLIENT_ID)
    long = make_app(**corp(oidc_provider, "sts"), store=local_store).test_client()
    short = make_app(**corp(oidc_provider, "sts", lifetime="20m"), store=local_store).test_client()

    cached = launch(long, oidc_provider, "ada")["credentials"]
    aws.recorder.reset()
    grant = launch(short, oidc_provider, "ada")
    [call] = aws.recorder.calls("AssumeRole")
    assert int(call["DurationSeconds"]) <= 1200
    assert grant["credentials"]["access_key_id"] != cached["access_key_id"]
    expires = datetime.fromisoformat(grant["credentials"]["expiration"].replace("Z", "+00:00"))
    ends = datetime.fromisoformat(grant["broker_session"]["expires_at"].replace("Z", "+00:00"))
    assert (expires - ends).total_seconds() <= 5

    # The long broker still reuses what fits its own sessions.
    aws.recorder.reset()
    assert launch(long, oidc_provider, "ada")["credentials"]["access_key_id"] in {
        cached["access_key_id"],
        grant["credentials"]["access_key_id"],
    }
    assert aws.recorder.calls("AssumeRole") == []


def test_new_tags_replace_the_users_cached_credentials(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    oidc_provider.register_client(CLIENT_ID)
    client = make_app(**corp(oidc_provider, "sts", groups=True)).test_client()
    before = launch(client, oidc_provider, "ada", team="red")
    after = launch(client, oidc_provider, "ada", team="blue")
    assert [sts_tags(c)["team"] for c in aws.recorder.calls("AssumeRole")] == ["red", "blue"]
    assert after["credentials"]["access_key_id"] != before["credentials"]["access_key_id"]

    # The session opened with the old tags no longer finds credentials it could use: the
    # entry holds the new ones, so it vends again, with its own tags.
    aws.recorder.reset()
    renewed = refresh(client, before["broker_session"]["token"])
    [call] = aws.recorder.calls("AssumeRole")
    assert sts_tags(call)["team"] == "red"
    assert renewed["credentials"]["access_key_id"] not in {
        before["credentials"]["access_key_id"],
        after["credentials"]["access_key_id"],
    }


def test_logout_drops_the_users_cached_credentials(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    oidc_provider.register_client(CLIENT_ID)
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    grant = launch(client, oidc_provider, "ada")
    session = grant["broker_session"]["token"]
    out = client.post("/v1/logout", headers={"Authorization": f"Bearer {session}"})
    assert out.status_code == 200
    aws.recorder.reset()
    again = launch(client, oidc_provider, "ada")
    assert len(aws.recorder.calls("AssumeRole")) == 1
    assert again["credentials"]["access_key_id"] != grant["credentials"]["access_key_id"]
