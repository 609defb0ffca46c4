"""The SP metadata a SAML IdP is given, over HTTP: it asks for the NameID format the README
recommends (persistent) unless the provider's ``name_id_format`` says otherwise, the
AuthnRequest's NameIDPolicy asks for the same, and the document may be cached
(``cacheDuration``) no longer than it stays valid (``validUntil``)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from identity.errors import ConfigError
from tests.fixtures import saml_idp as idp_kit
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.saml_idp import SamlIdp
from tests.integration.test_saml_login import saml_config

NS = {"md": idp_kit.NS_MD, "samlp": idp_kit.NS_SAMLP}
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"


def duration_seconds(value: str) -> int:
    """An xs:duration of the form python3-saml writes (``PT86400S``, ``P1D``...)."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", value)
    assert match, value
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def metadata(server: LiveServer) -> etree._Element:
    response = requests.get(f"{server.url}/v1/saml/corp/metadata", timeout=10)
    assert response.status_code == 200, response.text
    return etree.fromstring(response.content)


def name_id_policy(server: LiveServer, idp: SamlIdp) -> str | None:
    """The Format of the NameIDPolicy in the AuthnRequest a login sends."""
    begun = LoopbackSession().get(f"{server.url}/v1/login/corp", allow_redirects=False, timeout=10)
    assert begun.status_code == 302, begun.text
    seen = idp.read_authn_request(begun.headers["Location"])
    policy = etree.fromstring(seen.xml.encode()).find("samlp:NameIDPolicy", NS)
    assert policy is not None
    return policy.get("Format")


@pytest.mark.parametrize(
    ("setting", "urn"),
    [
        ({}, PERSISTENT),
        ({"name_id_format": "persistent"}, PERSISTENT),
        (
            # An email-address NameID may be the user id only when allowed outright.
            {"name_id_format": "email", "allow_mutable_user_id": True},
            "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        ),
        (
            {"name_id_format": "unspecified"},
            "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        ),
        ({"name_id_format": "transient"}, "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"),
    ],
    ids=["default", "persistent", "email", "unspecified", "transient"],
)
def test_the_sp_asks_for_the_configured_name_id_format(
    setting: dict[str, Any],
    urn: str,
    live_broker: Callable[..., LiveServer],
    aws: Any,
    saml_idp: SamlIdp,
) -> None:
    server = live_broker(lambda url: saml_config(url, aws, saml_idp, **setting))
    formats = metadata(server).findall("md:SPSSODescriptor/md:NameIDFormat", NS)
    assert [node.text for node in formats] == [urn]
    assert name_id_policy(server, saml_idp) == urn


def test_the_metadata_may_be_cached_only_while_it_is_valid(
    live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp
) -> None:
    server = live_broker(lambda url: saml_config(url, aws, saml_idp))
    root = metadata(server)
    valid_until = OneLogin_Saml2_Utils.parse_SAML_to_time(root.get("validUntil"))
    cache_duration = duration_seconds(root.get("cacheDuration") or "")
    assert cache_duration == 86400
    assert valid_until - time.time() >= cache_duration


def test_an_unknown_name_id_format_is_a_config_problem(aws: Any, saml_idp: SamlIdp) -> None:
    with pytest.raises(ConfigError) as raised:
        saml_config("https://auth.example.chat", aws, saml_idp, name_id_format="x509")
    assert "providers[0].name_id_format" in str(raised.value)
    for short in ("persistent", "email", "unspecified", "transient"):
        assert short in str(raised.value)
