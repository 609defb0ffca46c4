"""Rotating ``service.secret_key``: a broker restarted with ``[new, old]`` keeps the sessions
the old key sealed and seals new ones with the new key; without the old key they are gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from identity import session_admin
from identity.broker import Broker
from identity.config.document import build_config
from identity.errors import ConfigError
from service.app import _secrets
from tests.fixtures.apps import MakeApp, broker_config, broker_config_dict
from tests.fixtures.moto_server import AwsWorld

OLD_KEY = "old-secret-key-0123456789abcdefghijklmnop"
NEW_KEY = "new-secret-key-0123456789abcdefghijklmnop"


def lobby() -> dict[str, Any]:
    return {
        "name": "lobby",
        "kind": "guest",
        "exchange": "sts",
        "allow_open_guests": True,
        "map": {"user_id": "lobby-{random}"},
    }


def broker(make_app: MakeApp, tmp_path: Path, secret_key: str | list[str]) -> FlaskClient:
    """A broker with ``secret_key`` on the store file every broker of the test shares."""
    config = broker_config(
        providers=[lobby()],
        service__secret_key=secret_key,
        store=f"sqlite:///{tmp_path / 'state.db'}",
    )
    return make_app(config).test_client()


def open_guest(client: FlaskClient) -> tuple[str, str]:
    """A new guest session: its token and the guest's user id."""
    response = client.post("/v1/guest", json={"provider": "lobby"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    return body["broker_session"]["token"], body["user_id"]


def open_session(client: FlaskClient) -> str:
    return open_guest(client)[0]


def admin(client: FlaskClient) -> Broker:
    broker: Broker = client.application.extensions["chime_broker"].broker
    return broker


def refresh(client: FlaskClient, token: str) -> int:
    response = client.post("/v1/credentials", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


def test_a_session_outlives_a_rotation_and_new_ones_are_sealed_with_the_new_key(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    before = open_session(broker(make_app, tmp_path, OLD_KEY))

    rotated = broker(make_app, tmp_path, [NEW_KEY, OLD_KEY])
    assert refresh(rotated, before) == 200
    after = open_session(rotated)
    assert refresh(rotated, after) == 200

    new_only = broker(make_app, tmp_path, [NEW_KEY])
    assert refresh(new_only, after) == 200
    assert refresh(new_only, before) == 401


def test_a_broker_without_the_old_key_refuses_its_sessions(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    token = open_session(broker(make_app, tmp_path, OLD_KEY))

    assert refresh(broker(make_app, tmp_path, [NEW_KEY]), token) == 401
    assert refresh(broker(make_app, tmp_path, NEW_KEY), token) == 401


def test_a_revocation_made_before_the_rotation_still_holds(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    before = broker(make_app, tmp_path, OLD_KEY)
    token = open_session(before)
    session_admin.revoke_provider(admin(before), "lobby")

    assert refresh(broker(make_app, tmp_path, [NEW_KEY, OLD_KEY]), token) == 401


def test_a_user_revoked_after_the_rotation_loses_the_sessions_of_before(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    token, user_id = open_guest(broker(make_app, tmp_path, OLD_KEY))
    rotated = broker(make_app, tmp_path, [NEW_KEY, OLD_KEY])
    assert session_admin.list_user(admin(rotated), user_id)["count"] == 1

    revoked = session_admin.revoke_user(admin(rotated), user_id)

    assert revoked.ended_sessions == 1
    assert refresh(rotated, token) == 401
    assert session_admin.list_user(admin(rotated), user_id)["count"] == 0


def test_a_broker_not_yet_rotated_sees_a_revocation_made_by_a_rotated_one(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    old_only = broker(make_app, tmp_path, OLD_KEY)
    token = open_session(old_only)

    session_admin.revoke_provider(admin(broker(make_app, tmp_path, [NEW_KEY, OLD_KEY])), "lobby")

    assert refresh(old_only, token) == 401


def test_a_single_key_list_works_like_the_plain_key(
    aws: AwsWorld, make_app: MakeApp, tmp_path: Path
) -> None:
    token = open_session(broker(make_app, tmp_path, [OLD_KEY]))
    assert refresh(broker(make_app, tmp_path, OLD_KEY), token) == 200


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ([NEW_KEY, "too-short"], "service.secret_key[1]"),
        (["too-short", OLD_KEY], "service.secret_key[0]"),
    ],
)
def test_a_short_key_in_the_list_is_reported_at_its_index(keys: list[str], path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(broker_config_dict(service__secret_key=keys), env={})
    problems = [p for p in raised.value.problems if "secret_key" in p]
    assert problems == [f"{path}: must be at least 32 characters"], raised.value.problems


def test_an_empty_key_list_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(broker_config_dict(service__secret_key=[]), env={})
    assert any(p.startswith("service.secret_key") for p in raised.value.problems)


def test_every_key_of_the_list_is_redacted_from_logs() -> None:
    config = build_config(broker_config_dict(service__secret_key=[NEW_KEY, OLD_KEY]), env={})
    assert {NEW_KEY, OLD_KEY} <= set(_secrets(config))
