"""The ``oidc`` kind's options for real providers: ``algorithms``, ``offline_access``
(``prompt=consent``; Google's ``access_type=offline``), and the ``check`` warning for
mobile audiences whose templates read claims that a conformant provider sends at userinfo."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from identity.config.document import BrokerConfig, build_config
from identity.errors import ConfigError
from service.cli import main
from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.configs import provider_dict, valid_config_dict
from tests.fixtures.providers import built_providers


def config_with(*entries: dict[str, Any]) -> BrokerConfig:
    return build_config(valid_config_dict(providers=list(entries)))


def problems_of(entry: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config_with(entry)
    return "\n".join(caught.value.problems)


def authorize_params(config: BrokerConfig, name: str) -> dict[str, list[str]]:
    provider = built_providers(config).redirect[name]
    url = provider.authorization_url(
        redirect_uri="https://auth.example.chat/v1/callback/x",
        state="s",
        nonce="n",
        code_challenge="c" * 43,
    )
    return parse_qs(urlsplit(url).query)


# -- algorithms ---------------------------------------------------------------------------


def test_algorithms_pin_public_key_algorithms() -> None:
    config = config_with(provider_dict("oidc", algorithms=["ES256", "EdDSA", "PS384"]))
    assert config.providers[0].algorithms == ("ES256", "EdDSA", "PS384")  # type: ignore[attr-defined]
    assert config_with(provider_dict("oidc")).providers[0].algorithms is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        (["HS256"], "'HS256' is not accepted"),
        (["RS256", "none"], "'none' is not accepted"),
        (["RS256", "RS256"], "each algorithm once"),
        ([], "must not be empty"),
    ],
)
def test_algorithms_refuse_hmac_none_repeats_and_nothing(
    algorithms: list[str], message: str
) -> None:
    found = problems_of(provider_dict("oidc", algorithms=algorithms))
    assert "providers[0].algorithms" in found and message in found


# -- offline_access -----------------------------------------------------------------------


def test_offline_access_asks_for_consent(oidc_provider: DevIdentityProvider) -> None:
    issuer = {"issuer": oidc_provider.issuer, "client_secret": "s"}
    config = config_with(
        provider_dict("oidc", **issuer, scopes=["openid", "email", "offline_access"]),
        provider_dict("oidc", **issuer, name="plain", map={"user_id": "plain-{sub}"}),
    )
    offline = authorize_params(config, "okta")
    assert offline["prompt"] == ["consent"]
    assert offline["scope"] == ["openid email offline_access"]
    assert "prompt" not in authorize_params(config, "plain")


def test_google_offline_access_is_access_type_offline() -> None:
    config = config_with(
        provider_dict(
            "google", client_secret="s", scopes=["openid", "email", "profile", "offline_access"]
        )
    )
    sent = authorize_params(config, "google")
    assert sent["access_type"] == ["offline"] and sent["prompt"] == ["consent"]
    assert sent["scope"] == ["openid email profile"]
    default = authorize_params(config_with(provider_dict("google", client_secret="s")), "google")
    assert "access_type" not in default and default["scope"] == ["openid email profile"]


# -- claims a mobile id token may not carry -------------------------------------------------


MOBILE = {"audiences": ["spa", "ios-app"]}


def test_mobile_audiences_reading_userinfo_claims_are_warned_about() -> None:
    entry = provider_dict(
        "oidc",
        **MOBILE,
        map={
            "user_id": "okta-{sub}",
            "display_name": "{name}",
            "tags": {"mail": "{email|lower}", "dept": "{dept}", "country": "{address.country}"},
            "require": {"email_verified": True, "groups": {"any_of": ["chat"]}},
        },
    )
    warnings = config_with(entry).providers[0].warnings()
    assert [(where, message.split(",")[0]) for where, message in warnings] == [
        (("map", "display_name"), "reads 'name'"),
        (("map", "tags", "mail"), "reads 'email'"),
        (("map", "tags", "country"), "reads 'address'"),
        (("map", "require", "email_verified"), "reads 'email_verified'"),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        # no mobile audience: browser logins read userinfo
        provider_dict("oidc", map={"user_id": "okta-{sub}", "display_name": "{name}"}),
        # a mobile audience, but only id-token claims
        provider_dict("oidc", **MOBILE, map={"user_id": "okta-{sub}", "tags": {"d": "{dept}"}}),
    ],
    ids=["web-only", "id-token-claims"],
)
def test_no_warning_without_a_mobile_path_or_userinfo_claims(entry: dict[str, Any]) -> None:
    assert config_with(entry).providers[0].warnings() == []


def test_check_prints_the_warning_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = provider_dict("oidc", **MOBILE, map={"user_id": "okta-{sub}", "display_name": "{name}"})
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(valid_config_dict(providers=[entry])))
    assert main(["check", "--offline", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"{path}: ok" in printed
    assert "warning: providers[0].map.display_name (okta): reads 'name'" in printed


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        (
            {
                "aws__sts__duration_seconds": 900,
                "providers": [provider_dict("oidc", exchange="sts")],
            },
            "aws.sts.duration_seconds",
        ),
        (
            {"providers": [provider_dict("guest", exchange="sts", credential_ttl=900)]},
            "providers[0].credential_ttl (guests)",
        ),
    ],
    ids=["sts-duration", "guest-ttl"],
)
def test_check_warns_that_short_credentials_send_every_sdk_call_back(
    overrides: dict[str, Any], where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(valid_config_dict(**overrides)))
    assert main(["check", "--offline", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {where}: credentials shorter than 30 minutes are expensive" in printed


def test_hour_long_credentials_draw_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(valid_config_dict(aws__sts__duration_seconds=3600)))
    assert main(["check", "--offline", "--config", str(path)]) == 0
    assert "warning:" not in capsys.readouterr().out
