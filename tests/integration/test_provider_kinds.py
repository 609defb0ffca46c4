"""A provider kind is one model, one ``build`` and one line in ``KINDS``: this module adds
a kind of its own through ``KINDS`` alone and signs a user in with it end to end."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

import pytest
from flask.testing import FlaskClient

from identity.config.document import build_config
from identity.config.models import ProviderBase
from identity.config.types import NonEmptyStr
from identity.errors import ConfigError, InvalidToken
from identity.models import Principal
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.kinds import KINDS
from tests.fixtures.apps import MakeApp
from tests.fixtures.configs import provider_dict, valid_config_dict
from tests.fixtures.moto_server import AwsWorld

PASSWORD = "pass-phrase-of-the-test-kind"


class BadgeConfig(ProviderBase):
    """Badges: ``badge:USER:MAC`` where MAC is HMAC-SHA256(secret, USER)."""

    kind: Literal["badge"]
    secret: NonEmptyStr


class BadgeReader:
    """A ``TokenProvider`` that takes access tokens (badges)."""

    accepts_id_token = False
    accepts_access_token = True

    def __init__(self, entry: BadgeConfig) -> None:
        self.name = entry.name
        self.kind = entry.kind
        self._secret = entry.secret.encode()

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> Principal:
        raise InvalidToken("badges are access tokens")

    def verify_access_token(self, access_token: str) -> Principal:
        prefix, _, rest = access_token.partition(":")
        user, _, mac = rest.partition(":")
        expected = hmac.new(self._secret, user.encode(), hashlib.sha256).hexdigest()
        if prefix != "badge" or not user or not hmac.compare_digest(mac, expected):
            raise InvalidToken("not a badge of this reader")
        return Principal(
            provider=self.name, issuer="urn:badges", subject=user, claims={"sub": user}
        )


def build_badge(entry: BadgeConfig, context: BuildContext) -> Built:
    return Built(token=BadgeReader(entry))


@pytest.fixture
def badge_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, "badge", ProviderKind(model=BadgeConfig, build=build_badge))


def badge_entry(**extra: Any) -> dict[str, Any]:
    return {
        "name": "badges",
        "kind": "badge",
        "secret": PASSWORD,
        "exchange": "sts",
        "map": {"user_id": "badge-{sub}"},
        **extra,
    }


def badge(user: str) -> str:
    return f"badge:{user}:" + hmac.new(PASSWORD.encode(), user.encode(), hashlib.sha256).hexdigest()


def test_an_unknown_kind_is_refused_until_it_is_in_kinds() -> None:
    document = valid_config_dict(providers=[provider_dict("oidc"), badge_entry()])
    with pytest.raises(ConfigError) as refused:
        build_config(document)
    (problem,) = refused.value.problems
    assert problem.startswith("providers[1].kind: unknown kind 'badge'; expected one of oidc")


@pytest.mark.usefixtures("badge_kind")
def test_the_new_kind_validates_its_own_keys() -> None:
    document = valid_config_dict(
        providers=[provider_dict("oidc"), badge_entry(secert="typo", secret="")]
    )
    with pytest.raises(ConfigError) as refused:
        build_config(document)
    assert refused.value.problems == [
        "providers[1].secret: must not be empty",
        "providers[1].secert: unknown key for kind 'badge' (did you mean 'secret'?)",
    ]


@pytest.mark.usefixtures("badge_kind")
def test_the_new_kind_signs_a_user_in_end_to_end(aws: AwsWorld, make_app: MakeApp) -> None:
    client: FlaskClient = make_app(providers=[provider_dict("oidc"), badge_entry()]).test_client()

    accepted = client.post("/v1/token", json={"provider": "badges", "access_token": badge("ada")})
    forged = client.post("/v1/token", json={"provider": "badges", "access_token": "badge:ada:00"})

    assert accepted.status_code == 200, accepted.get_json()
    assert accepted.get_json()["user_id"] == "badge-ada"
    assert accepted.get_json()["app_instance_user_arn"].endswith("/user/badge-ada")
    assert forged.status_code == 401
    assert forged.get_json()["code"] == "invalid_token"
    (assume,) = aws.recorder.calls("AssumeRole")
    assert assume["RoleArn"] == aws.user_role_arn
    assert assume["Tags.member.1.Value"] == "badge-ada"
