"""Bearer sessions: refresh, the container-credentials format, logout and the credential
cache, against the moto server (STS where lifetimes matter: moto's Cognito credentials last
90 s) and the local OIDC provider."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.credentials import ContainerProvider
from botocore.exceptions import CredentialRetrievalError
from botocore.utils import ContainerMetadataFetcher
from flask.testing import FlaskClient

from identity.credential_cache import CredentialCache
from identity.sealing import Sealer, token_hash
from identity.store import Store
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.fixtures.configs import SECRET_KEY
from tests.fixtures.recorder import sts_tags
from tests.fixtures.records import UNREADABLE_SEALED, spoil_sealed

CLIENT_ID = "mobile-app"


def corp(idp: Any, exchange: str, **service: Any) -> dict[str, Any]:
    """``make_app`` overrides: one provider, ``corp`` (the local IdP), vending through
    ``exchange``; STS credentials for up to an hour, sessions of an hour."""
    return {
        "aws__sts__duration_seconds": 3600,
        "service__session_lifetime": "1h",
        **{f"service__{name}": value for name, value in service.items()},
        "providers": [
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": CLIENT_ID,
                "exchange": exchange,
                "map": {"user_id": "{sub}" if exchange == "cognito" else "corp-{sub}"},
            },
        ],
    }


def start(
    client: FlaskClient, idp: Any, sub: str = "alice", lifetime: int = 3600
) -> dict[str, Any]:
    idp.register_client(CLIENT_ID)
    token = idp.mint_id_token({"sub": sub}, audience=CLIENT_ID, lifetime=lifetime)
    response = client.post("/v1/token", json={"provider": "corp", "id_token": token})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def refresh(client: FlaskClient, token: str) -> Any:
    return client.post("/v1/credentials", headers={"Authorization": f"Bearer {token}"})


def assert_unauthenticated(response: Any, code: str = "unauthenticated") -> None:
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == code
    assert "credentials" not in response.get_json()


@pytest.mark.parametrize("exchange", ["sts", "cognito_developer", "cognito"])
def test_refresh_works_until_the_session_ends_and_never_after(
    exchange: str, aws: Any, oidc_provider: Any, clock: FakeClock, make_app: MakeApp
) -> None:
    app = make_app(**corp(oidc_provider, exchange, cache_credentials=False), clock=clock)
    client = app.test_client()
    body = start(client, oidc_provider, lifetime=7200)
    session = body["broker_session"]["token"]
    started = clock.now
    for minutes in (0, 30, 59):
        clock.now = started + minutes * 60
        response = refresh(client, session)
        assert response.status_code == 200, response.get_json()
        assert response.headers["Cache-Control"].startswith("no-store")
        refreshed = response.get_json()
        assert refreshed["app_instance_user_arn"] == body["app_instance_user_arn"]
        assert "broker_session" not in refreshed
    aws.recorder.reset()
    clock.now = started + 3601
    assert_unauthenticated(refresh(client, session))
    assert aws.recorder.requests() == []


def test_cognito_mode_needs_a_valid_upstream_token(
    aws: Any, oidc_provider: Any, clock: FakeClock, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "cognito"), clock=clock).test_client()
    session = start(client, oidc_provider, lifetime=600)["broker_session"]["token"]
    clock.advance(300)
    assert refresh(client, session).status_code == 200
    aws.recorder.reset()
    clock.advance(301)
    assert_unauthenticated(refresh(client, session), "reauthentication_required")
    assert aws.recorder.requests() == []


@pytest.mark.parametrize(
    ("elapsed", "expected_duration"),
    [(0, 3600), (40 * 60, 1200), (55 * 60, 900)],
)
def test_sts_credentials_never_outlive_the_session_more_than_sts_requires(
    elapsed: int,
    expected_duration: int,
    aws: Any,
    oidc_provider: Any,
    clock: FakeClock,
    make_app: MakeApp,
) -> None:
    app = make_app(**corp(oidc_provider, "sts", cache_credentials=False), clock=clock)
    client = app.test_client()
    session = start(client, oidc_provider, lifetime=7200)["broker_session"]["token"]
    aws.recorder.reset()
    clock.advance(elapsed)
    assert refresh(client, session).status_code == 200
    [call] = aws.recorder.calls("AssumeRole")
    # The session has 3600 - elapsed seconds left; STS takes no less than 900.
    assert int(call["DurationSeconds"]) == expected_duration


def test_the_first_exchange_is_capped_by_the_session_lifetime(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts", session_lifetime="20m")).test_client()
    body = start(client, oidc_provider)
    [call] = aws.recorder.calls("AssumeRole")
    assert 1195 <= int(call["DurationSeconds"]) <= 1200
    expires = datetime.fromisoformat(body["credentials"]["expiration"].replace("Z", "+00:00"))
    session_end = datetime.fromisoformat(
        body["broker_session"]["expires_at"].replace("Z", "+00:00")
    )
    assert abs((expires - session_end).total_seconds()) <= 5


def test_cached_credentials_are_reused_per_user_starting_with_the_exchanges_own(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    alice_start = start(client, oidc_provider, "alice")
    bob_start = start(client, oidc_provider, "bob")
    [alice_call, bob_call] = aws.recorder.calls("AssumeRole")
    assert [sts_tags(c)["my_applications_user_id"] for c in (alice_call, bob_call)] == [
        "corp-alice",
        "corp-bob",
    ]
    aws.recorder.reset()
    alice, bob = alice_start["broker_session"]["token"], bob_start["broker_session"]["token"]
    alice_1 = refresh(client, alice).get_json()["credentials"]
    alice_2 = refresh(client, alice).get_json()["credentials"]
    bob_1 = refresh(client, bob).get_json()["credentials"]
    assert alice_1 == alice_2 == alice_start["credentials"]
    assert bob_1 == bob_start["credentials"]
    assert alice_1["access_key_id"] != bob_1["access_key_id"]
    # A second launch of alice's app: a new session, the same user, the same credentials.
    again = start(client, oidc_provider, "alice")
    assert again["broker_session"]["token"] != alice
    assert again["credentials"] == alice_1
    assert aws.recorder.calls("AssumeRole") == []


@pytest.mark.parametrize("how", UNREADABLE_SEALED)
def test_a_cached_credential_stored_in_a_form_this_version_does_not_read_is_vended_again(
    how: str, aws: Any, oidc_provider: Any, make_app: MakeApp, local_store: Store
) -> None:
    client = make_app(**corp(oidc_provider, "sts"), store=local_store).test_client()
    started = start(client, oidc_provider)
    session, first = started["broker_session"]["token"], started["credentials"]
    cache_key = CredentialCache(local_store, Sealer(SECRET_KEY), clock=time.time).key(
        provider="corp", user_id="corp-alice", role=f"sts:{aws.user_role_arn}"
    )
    spoil_sealed(local_store, cache_key, how, field="session_token")
    aws.recorder.reset()

    vended = refresh(client, session)
    assert vended.status_code == 200, vended.get_json()
    assert vended.get_json()["credentials"]["access_key_id"] != first["access_key_id"]
    assert len(aws.recorder.calls("AssumeRole")) == 1
    cached = refresh(client, session)
    assert cached.get_json()["credentials"] == vended.get_json()["credentials"]
    assert len(aws.recorder.calls("AssumeRole")) == 1


@pytest.mark.parametrize("how", UNREADABLE_SEALED)
def test_a_session_stored_in_a_form_this_version_does_not_read_is_no_session(
    how: str, aws: Any, oidc_provider: Any, make_app: MakeApp, local_store: Store
) -> None:
    client = make_app(**corp(oidc_provider, "sts"), store=local_store).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    assert refresh(client, session).status_code == 200
    spoil_sealed(local_store, "session:" + token_hash(session), how, field="user_id")
    aws.recorder.reset()

    assert_unauthenticated(refresh(client, session))
    assert_unauthenticated(
        client.get("/v1/credentials/container", headers={"Authorization": session})
    )
    assert aws.recorder.requests() == []


def test_logout_ends_a_bearer_session(aws: Any, oidc_provider: Any, make_app: MakeApp) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    assert refresh(client, session).status_code == 200
    response = client.post("/v1/logout", headers={"Authorization": f"Bearer {session}"})
    assert response.status_code == 200
    assert response.get_json() == {"end_session_url": None}
    aws.recorder.reset()
    assert_unauthenticated(refresh(client, session))
    assert_unauthenticated(
        client.get("/v1/credentials/container", headers={"Authorization": session})
    )
    assert_unauthenticated(
        client.post("/v1/logout", headers={"Authorization": f"Bearer {session}"})
    )
    assert aws.recorder.requests() == []


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "cbs_not-a-session",
        "Bearer {token}",
        "bearer {token}",
        "{token} extra",
        "Basic {token}",
        "{token}x",
    ],
)
def test_the_container_endpoint_takes_exactly_the_bare_token(
    authorization: str | None, aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    aws.recorder.reset()
    headers = (
        {} if authorization is None else {"Authorization": authorization.format(token=session)}
    )
    assert_unauthenticated(client.get("/v1/credentials/container", headers=headers))
    assert aws.recorder.requests() == []
    good = client.get("/v1/credentials/container", headers={"Authorization": session})
    assert good.status_code == 200
    assert set(good.get_json()) == {
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "AccountId",
        "Expiration",
    }


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer ", "Bearer cbs_unknown", "Token abc", "Bearer a b"]
)
def test_refresh_refuses_missing_or_unknown_bearer_tokens(
    authorization: str | None, aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post("/v1/credentials", headers=headers)
    assert_unauthenticated(response)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert aws.recorder.requests() == []


def test_nothing_secret_is_readable_in_the_store(
    aws: Any, oidc_provider: Any, tmp_path: Path, make_config: MakeConfig, make_app: MakeApp
) -> None:
    db = tmp_path / "state.db"
    cognito = make_config(**corp(oidc_provider, "cognito"), store=f"sqlite:///{db}")
    client = make_app(cognito).test_client()
    oidc_provider.register_client(CLIENT_ID)
    id_token = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID, lifetime=7200)
    body = client.post("/v1/token", json={"provider": "corp", "id_token": id_token}).get_json()
    session = body["broker_session"]["token"]
    sts = make_config(**corp(oidc_provider, "sts"), store=f"sqlite:///{db}")
    sts_client = make_app(sts).test_client()
    sts_session = start(sts_client, oidc_provider, "bob")["broker_session"]["token"]
    cached = refresh(sts_client, sts_session).get_json()["credentials"]

    rows = sqlite3.connect(db).execute("SELECT * FROM broker_state").fetchall()
    assert len(rows) >= 3  # two sessions, one cached credential, identity ids
    dump = b"".join(
        (col if isinstance(col, bytes) else str(col).encode()) for row in rows for col in row
    )
    for secret in (
        session,
        sts_session,
        id_token,
        cached["secret_access_key"],
        cached["session_token"],
        cached["access_key_id"],
        body["credentials"]["secret_access_key"],
        "alice",
        "corp-bob",
    ):
        assert secret.encode() not in dump


def test_boto3_resolves_credentials_from_the_broker_by_itself(
    aws: Any,
    oidc_provider: Any,
    live_broker: Any,
    monkeypatch: pytest.MonkeyPatch,
    make_config: MakeConfig,
) -> None:
    server = live_broker(make_config(**corp(oidc_provider, "sts")))
    oidc_provider.register_client(CLIENT_ID)
    id_token = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    body = requests.post(
        f"{server.url}/v1/token", json={"provider": "corp", "id_token": id_token}, timeout=10
    ).json()
    session = body["broker_session"]["token"]
    # The broker's own STS client holds the server's credentials now; from here on only the
    # container provider can give the client process any.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{server.url}/v1/credentials/container"
    )
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", session)

    boto_session = boto3.session.Session(region_name=aws.region)
    credentials = boto_session.get_credentials()
    assert credentials is not None and credentials.method == "container-role"
    aws.recorder.reset()
    identity = boto_session.client("sts").get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::")
    [request] = [r for r in aws.recorder.requests() if r.operation == "GetCallerIdentity"]
    frozen = credentials.get_frozen_credentials()
    assert f"Credential={frozen.access_key}/" in request.headers["Authorization"]

    requests.post(
        f"{server.url}/v1/logout", headers={"Authorization": f"Bearer {session}"}, timeout=10
    ).raise_for_status()
    # The SDK retries a refused fetch after a second; the wait is not what is tested here.
    fetcher = ContainerMetadataFetcher(sleep=lambda _seconds: None)
    with pytest.raises(CredentialRetrievalError):
        ContainerProvider(fetcher=fetcher).load()
