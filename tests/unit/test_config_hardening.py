"""Config rules that keep identities stable and cookies unplantable: what ``map.user_id`` may
read and how it may filter it, and the session cookie's name against ``public_url``."""

from __future__ import annotations

from typing import Any

import pytest

from identity.config.document import BrokerConfig, build_config
from identity.errors import ConfigError
from tests.fixtures.configs import provider_dict, valid_config_dict

MUTABLE_HINT = "(or allow_mutable_user_id: true when nothing stable exists)"


def refusals(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(config)
    return caught.value.problems


def with_user_id(template: str, kind: str = "oidc", **extra: Any) -> dict[str, Any]:
    return valid_config_dict(providers=[provider_dict(kind, map={"user_id": template}, **extra)])


@pytest.mark.parametrize(
    ("template", "claims"),
    [
        ("okta-{email}", "email"),
        ("okta-{sub}-{email}", "email"),
        ("okta-{preferred_username}", "preferred_username"),
        ("okta-{given_name}.{family_name}", "given_name, family_name"),
        ("okta-{phone_number}", "phone_number"),
        ("okta-{upn}", "upn"),
        ("okta-{unique_name}", "unique_name"),
        ("okta-{nickname}", "nickname"),
        ("okta-{Email}", "Email"),
        ("okta-{profile.email}", "profile.email"),
        ("okta-{email|sha256:32}", "email"),
    ],
)
def test_a_user_id_reading_a_claim_users_can_change_is_refused(template: str, claims: str) -> None:
    assert refusals(with_user_id(template)) == [
        f"providers[0].map.user_id: {template!r} reads {claims}, which users or admins can "
        f"change; identity is (issuer, sub): use '{{sub}}' {MUTABLE_HINT}"
    ]


@pytest.mark.parametrize(
    "attribute",
    [
        "mail",
        "urn:oid:0.9.2342.19200300.100.1.3",
        "urn:oid:1.3.6.1.4.1.5923.1.1.1.6",
        "urn:oid:1.2.840.113549.1.9.1",
        "emailAddress",
        "eduPersonPrincipalName",
        "userPrincipalName",
    ],
)
def test_a_saml_user_id_reading_the_mail_or_upn_attribute_is_refused(attribute: str) -> None:
    template = f"corp-{{{attribute}}}"
    assert refusals(with_user_id(template, "saml")) == [
        f"providers[0].map.user_id: {template!r} reads {attribute}, which users or admins can "
        f"change; identity is (issuer, name_id): use '{{name_id}}' {MUTABLE_HINT}"
    ]


def test_an_email_name_id_as_the_user_id_is_refused_unless_allowed() -> None:
    email = with_user_id("corp-{name_id|sha256:24}", "saml", name_id_format="email")
    assert refusals(email) == [
        "providers[0].name_id_format: email makes the NameID an email address, which users or "
        "admins can change, and map.user_id reads {name_id}: ask for persistent, or build the "
        f"user id from a stable attribute {MUTABLE_HINT}"
    ]
    build_config(with_user_id("corp-{name_id|sha256:24}", "saml"))
    build_config(with_user_id("corp-{uid}", "saml", name_id_format="email"))
    build_config(
        with_user_id("corp-{name_id}", "saml", name_id_format="email", allow_mutable_user_id=True)
    )


@pytest.mark.parametrize(
    "name",
    [
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
        "http://schemas.xmlsoap.org/claims/EmailAddress",
        "http://schemas.xmlsoap.org/claims/UPN",
        "urn:oid:0.9.2342.19200300.100.1.3",
        "urn:oid:1.2.840.113549.1.9.1",
    ],
)
def test_a_saml_alias_of_a_mail_or_upn_attribute_is_refused(name: str) -> None:
    config = with_user_id("corp-{addr}", "saml", attributes={"addr": name})
    assert refusals(config) == [
        "providers[0].map.user_id: 'corp-{addr}' reads addr, which users or admins can "
        f"change; identity is (issuer, name_id): use '{{name_id}}' {MUTABLE_HINT}"
    ]


@pytest.mark.parametrize(
    ("template", "filters"),
    [
        ("okta-{sub|lower}", "lower"),
        ("okta-{sub|sha256:15}", "sha256:15"),
        ("okta-{sub|sha256:8|lower}", "sha256:8, lower"),
    ],
)
def test_a_user_id_with_a_lossy_filter_is_refused(template: str, filters: str) -> None:
    assert refusals(with_user_id(template)) == [
        f"providers[0].map.user_id: {template!r} uses {filters}, which can give two users one "
        "id (case folding, or sha256:N with N under 16)"
    ]


@pytest.mark.parametrize(
    "template", ["okta-{sub}", "okta-{sub|sha256:16}", "okta-{oid}", "okta-{sub}-{tid}"]
)
def test_stable_claims_and_long_digests_pass(template: str) -> None:
    config = build_config(with_user_id(template))
    assert config.providers[0].user_id_template.source == template


@pytest.mark.parametrize("template", ["okta-{email|lower}", "okta-{upn}", "okta-{oid|sha256:8}"])
def test_allow_mutable_user_id_is_the_deliberate_way_out(template: str) -> None:
    config = build_config(with_user_id(template, allow_mutable_user_id=True))
    provider = config.providers[0]
    assert provider.allow_mutable_user_id is True
    assert provider.user_id_template.source == template


def test_allow_mutable_user_id_does_not_lift_other_rules() -> None:
    assert refusals(with_user_id("okta-user", allow_mutable_user_id=True)) == [
        "providers[0].map.user_id: 'okta-user' reads no claim: every user would get the same id"
    ]


def test_allow_mutable_user_id_defaults_to_false() -> None:
    assert build_config(valid_config_dict()).providers[0].allow_mutable_user_id is False


# -- the session cookie's name ---------------------------------------------------------------


def service(**overrides: Any) -> BrokerConfig:
    return build_config(valid_config_dict(**overrides))


def test_an_https_broker_names_its_cookie_with_the_host_prefix() -> None:
    assert service().service.cookie_name == "__Host-chime_broker_session"


def test_a_loopback_http_broker_keeps_the_plain_name() -> None:
    demo = service(
        mode="demo",
        service__public_url="http://127.0.0.1:8000",
        providers=[provider_dict("guest")],
    )
    assert demo.service.cookie_name == "chime_broker_session"
    plain = service(service__public_url="http://127.0.0.1:8000")
    assert plain.service.cookie_name == "chime_broker_session"


@pytest.mark.parametrize("url", ["https://auth.example.chat", "http://127.0.0.1:8000"])
def test_a_configured_name_wins(url: str) -> None:
    config = service(service__public_url=url, service__cookie_name="chat_session")
    assert config.service.cookie_name == "chat_session"


@pytest.mark.parametrize("name", ["__Host-chat_session", "__Secure-chat_session"])
def test_a_prefixed_name_needs_an_https_public_url(name: str) -> None:
    problems = refusals(
        valid_config_dict(service__public_url="http://127.0.0.1:8000", service__cookie_name=name)
    )
    assert problems == [
        f"service.cookie_name: {name!r}: browsers keep __Host- and __Secure- cookies only "
        "from https; public_url is http"
    ]
    assert service(service__cookie_name=name).service.cookie_name == name
