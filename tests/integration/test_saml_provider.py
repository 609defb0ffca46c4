"""SAML 2.0 sign-in at the provider level: AuthnRequests read by a real test IdP, Responses
it signs with xmlsec, and every attack an SP must refuse — each refusal leaves the replay
cache empty, so no assertion was ever accepted.

IdP metadata comes over HTTP from the IdP on loopback (refresh and failure included) or
from a file.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from identity.config.document import build_config
from identity.errors import (
    AccessDenied,
    BrokerError,
    ConfigError,
    InvalidToken,
    PayloadTooLarge,
    UnmappableIdentity,
    UpstreamUnavailable,
)
from identity.models import Principal
from identity.providers.saml import SamlServiceProvider, prepare_request
from identity.providers.saml_metadata import (
    FileMetadataSource,
    MetadataError,
    UrlMetadataSource,
    parse_idp_metadata,
)
from identity.store import MemoryStore
from service.endpoints import Endpoints
from tests.fakes import FakeClock
from tests.fixtures import saml_idp as idp_kit
from tests.fixtures.configs import REMOVE, provider_dict, valid_config_dict
from tests.fixtures.providers import built_providers
from tests.fixtures.saml_idp import (
    MetadataFault,
    SamlAttribute,
    SamlIdp,
    encode,
    make_key_pair,
    rogue_keys,
    sp_keys,
    verify_signature,
)

PUBLIC_URL = "https://auth.example.chat"
SP_ENTITY_ID = "https://auth.example.chat/v1/saml/corp/metadata"
ATTRIBUTES = (
    SamlAttribute("urn:oid:0.9.2342.19200300.100.1.3", ("alice@example.com",), "mail"),
    SamlAttribute("urn:oid:2.16.840.1.113730.3.1.241", ("Alice Example",), "displayName"),
    SamlAttribute("http://schemas.example.com/groups", ("chat-users", "admins"), "groups"),
    SamlAttribute("department", ("R&D",)),
)
EXPECTED_ATTRIBUTE_CLAIMS = {
    "urn:oid:0.9.2342.19200300.100.1.3": "alice@example.com",
    "mail": "alice@example.com",
    "urn:oid:2.16.840.1.113730.3.1.241": "Alice Example",
    "displayName": "Alice Example",
    "http://schemas.example.com/groups": ["chat-users", "admins"],
    "groups": ["chat-users", "admins"],
    "department": "R&D",
}


@pytest.fixture
def idp(saml_idp: SamlIdp) -> SamlIdp:
    """The test IdP, on loopback."""
    return saml_idp


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def saml_entry(**overrides: Any) -> dict[str, Any]:
    return provider_dict("saml", **overrides)


def build_sp(
    entries: list[dict[str, Any]], store: MemoryStore, *, public_url: str = PUBLIC_URL
) -> dict[str, SamlServiceProvider]:
    config = build_config(
        valid_config_dict(
            providers=[provider_dict("oidc"), *entries], service__public_url=public_url
        )
    )
    built = dict(built_providers(config, store=store).saml)
    for provider in built.values():
        provider.warm_up()  # as a serving broker's start-up does
    return built


@pytest.fixture
def sp(idp: SamlIdp, store: MemoryStore) -> SamlServiceProvider:
    """The ``corp`` SP, built from config, its IdP metadata fetched from ``idp``."""
    return build_sp([saml_entry(idp_metadata_url=idp.metadata_url)], store)["corp"]


@dataclass(frozen=True)
class Login:
    request_id: str
    relay_state: str


def start_login(sp: SamlServiceProvider, idp: SamlIdp, *, sp_cert: str | None = None) -> Login:
    """What the login endpoint does: an opaque RelayState, an AuthnRequest, the redirect;
    the IdP reads the request from the redirect URL."""
    relay_state = secrets.token_urlsafe(24)
    url, request_id = sp.authorization_request(relay_state)
    seen = idp.read_authn_request(url, sp_cert=sp_cert)
    assert seen.id == request_id
    assert seen.relay_state == relay_state
    return Login(request_id, relay_state)


def answer(sp: SamlServiceProvider, idp: SamlIdp, login: Login | None, **fields: Any) -> str:
    """The IdP's signed Response (XML) for ``login`` (None: unsolicited) with good values
    unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "in_response_to": login.request_id if login else None,
        "destination": sp.acs_url,
        "audience": sp.entity_id,
        "recipient": sp.acs_url,
        "name_id": "alice-0001",
        "attributes": ATTRIBUTES,
    }
    values.update(fields)
    return idp.build_response(**values)


def finish(
    sp: SamlServiceProvider, login: Login | None, xml_or_b64: str, *, raw: bool = False
) -> Principal:
    return sp.finish(
        xml_or_b64 if raw else encode(xml_or_b64),
        request_id=login.request_id if login else None,
        relay_state=login.relay_state if login else None,
    )


def refused(
    sp: SamlServiceProvider,
    store: MemoryStore,
    login: Login | None,
    xml_or_b64: str,
    *,
    raw: bool = False,
    error: type[BrokerError] = InvalidToken,
) -> BrokerError:
    """Submit, expect ``error``, and check that no assertion was accepted."""
    with pytest.raises(error) as caught:
        finish(sp, login, xml_or_b64, raw=raw)
    assert len(store) == 0, "a refused response must not reach the replay cache"
    return caught.value


def in_(minutes: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)


# --------------------------------------------------------------------------- the flow


def test_sign_in_returns_the_principal_the_signed_assertion_names(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    relay_state = secrets.token_urlsafe(24)
    url, request_id = sp.authorization_request(relay_state)
    seen = idp.read_authn_request(url)
    assert (seen.id, seen.relay_state, seen.signed) == (request_id, relay_state, False)
    assert seen.destination == idp.sso_url
    assert seen.acs_url == "https://auth.example.chat/v1/saml/corp/acs" == sp.acs_url
    assert seen.issuer == SP_ENTITY_ID
    assert "RequestedAuthnContext" not in seen.xml

    session_end = in_(8 * 60).replace(microsecond=0)
    xml = idp.build_response(
        in_response_to=seen.id,
        destination=seen.acs_url,
        audience=seen.issuer,
        recipient=seen.acs_url,
        name_id="alice-0001",
        attributes=ATTRIBUTES,
        session_index="idp-session-7",
        session_not_on_or_after=session_end,
    )
    principal = sp.finish(encode(xml), request_id=request_id, relay_state=relay_state)

    assert principal.provider == "corp"
    assert principal.issuer == idp.entity_id
    assert principal.subject == "alice-0001"
    assert principal.claims == {
        "name_id": "alice-0001",
        "name_id_format": idp_kit.NAMEID_PERSISTENT,
        "session_index": "idp-session-7",
        **EXPECTED_ATTRIBUTE_CLAIMS,
    }
    assert principal.token_expires_at == session_end
    assert principal.login_token is None
    assert len(store) == 1


def test_without_session_not_on_or_after_the_session_ends_with_the_confirmation(
    sp: SamlServiceProvider, idp: SamlIdp
) -> None:
    login = start_login(sp, idp)
    until = in_(4).replace(microsecond=0)
    principal = finish(sp, login, answer(sp, idp, login, not_on_or_after=until))
    assert principal.token_expires_at == until


def test_attributes_never_take_the_subject_claims_and_names_win_over_friendly_names(
    sp: SamlServiceProvider, idp: SamlIdp
) -> None:
    login = start_login(sp, idp)
    attributes = (
        SamlAttribute("name_id", ("admin",)),
        SamlAttribute("urn:oid:1", ("from-friendly",), "session_index"),
        SamlAttribute("urn:oid:2", ("shadowed",), "department"),
        SamlAttribute("department", ("by-name",)),
        SamlAttribute("urn:oid:3", ("one",), "roles"),
        SamlAttribute("urn:oid:4", ("two",), "roles"),
        SamlAttribute("empty", ()),
    )
    principal = finish(sp, login, answer(sp, idp, login, attributes=attributes, session_index=None))
    assert principal.subject == "alice-0001"
    assert principal.claims["name_id"] == "alice-0001"
    assert "session_index" not in principal.claims
    assert principal.claims["department"] == "by-name"
    assert principal.claims["roles"] == ["one", "two"]
    assert principal.claims["empty"] == []


@pytest.mark.parametrize(
    "public_url",
    ["https://auth.example.chat", "https://example.com:8443/broker", "http://127.0.0.1:8000"],
)
def test_acs_url_destination_and_recipient_follow_the_public_url(
    public_url: str, idp: SamlIdp, store: MemoryStore
) -> None:
    sp = build_sp(
        [saml_entry(idp_metadata_url=idp.metadata_url, sp_entity_id="urn:example:sp")],
        store,
        public_url=public_url,
    )["corp"]
    assert sp.acs_url == f"{public_url}/v1/saml/corp/acs"
    assert sp.metadata_url == f"{public_url}/v1/saml/corp/metadata"
    login = start_login(sp, idp)
    assert finish(sp, login, answer(sp, idp, login)).subject == "alice-0001"


def test_prepare_request_takes_scheme_host_and_port_from_the_public_url() -> None:
    request = prepare_request(
        "https://example.com:8443/broker/v1/saml/corp/acs", {"SAMLResponse": "x"}, {"a": "b"}
    )
    assert request == {
        "https": "on",
        "http_host": "example.com:8443",
        "script_name": "/broker/v1/saml/corp/acs",
        "get_data": {"a": "b"},
        "post_data": {"SAMLResponse": "x"},
    }
    assert prepare_request("http://127.0.0.1:8000/p", {}, {})["https"] == "off"


def test_idp_initiated_sign_in_only_when_allowed(idp: SamlIdp, store: MemoryStore) -> None:
    sp = build_sp([saml_entry(idp_metadata_url=idp.metadata_url, allow_idp_initiated=True)], store)[
        "corp"
    ]
    principal = sp.finish(
        encode(answer(sp, idp, None)), request_id=None, relay_state="https://app.example.chat/"
    )
    assert principal.subject == "alice-0001"

    # A response to some AuthnRequest is not an IdP-initiated one, whatever it claims.
    error = refused_after(sp, store, None, answer(sp, idp, None, in_response_to="_other"), 1)
    assert error.detail == "response to another request"


def refused_after(
    sp: SamlServiceProvider, store: MemoryStore, login: Login | None, xml: str, accepted: int
) -> BrokerError:
    with pytest.raises(InvalidToken) as caught:
        finish(sp, login, xml)
    assert len(store) == accepted
    return caught.value


# --------------------------------------------------------------------------- configuration

ENTRA_DISPLAY_NAME = "http://schemas.microsoft.com/identity/claims/displayname"
ENTRA_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
URI_HINT = (
    "is a URI: name a SAML attribute by a short name given in the provider's attributes "
    "({short_name: URI})"
)


def config_problems(**entry: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(valid_config_dict(providers=[provider_dict("oidc"), saml_entry(**entry)]))
    return list(caught.value.problems)


def test_a_template_or_rule_naming_an_attribute_by_uri_is_refused_with_a_hint() -> None:
    [problem] = config_problems(
        map={"user_id": "corp-{name_id}", "display_name": f"{{{ENTRA_DISPLAY_NAME}}}"}
    )
    assert problem.startswith("providers[1].map.display_name: ")
    assert problem.endswith(f"{ENTRA_DISPLAY_NAME!r} {URI_HINT}")
    [problem] = config_problems(map={"user_id": "corp-{name_id}", "require": {ENTRA_GROUPS: "x"}})
    assert problem.startswith(f"providers[1].map.require[{ENTRA_GROUPS!r}]: ")
    assert problem.endswith(URI_HINT)


def test_attribute_short_names_are_claim_names_the_subject_does_not_fill() -> None:
    assert config_problems(attributes={"bad-name": "x", "name_id": "y", "fine": "z"}) == [
        "providers[1].attributes['bad-name']: a short name is letters, digits and _ (a claim name)",
        "providers[1].attributes.name_id: is filled from the assertion's subject",
    ]


def test_a_user_id_from_an_alias_of_a_mutable_attribute_is_refused() -> None:
    [problem] = config_problems(
        attributes={"shown": ENTRA_DISPLAY_NAME}, map={"user_id": "corp-{shown}"}
    )
    assert problem.startswith("providers[1].map.user_id: 'corp-{shown}' reads shown, which users")


def test_signature_is_either_assertion_or_response() -> None:
    assert config_problems(signature="sometimes") == [
        "providers[1].signature: expected 'either', 'assertion' or 'response', got 'sometimes'"
    ]


def test_aliases_name_attributes_for_templates_and_a_transient_name_id_is_no_identity(
    idp: SamlIdp, store: MemoryStore
) -> None:
    sp = build_sp(
        [saml_entry(idp_metadata_url=idp.metadata_url, attributes={"groups_": ENTRA_GROUPS})],
        store,
    )["corp"]
    login = start_login(sp, idp)
    attributes = (SamlAttribute(ENTRA_GROUPS, ("a", "b")),)
    xml = answer(sp, idp, login, attributes=attributes)
    principal = finish(sp, login, xml)
    assert principal.claims["groups_"] == ["a", "b"] == principal.claims[ENTRA_GROUPS]
    # explain's dry run names it the same way
    assert sp.check_assertion(encode(xml)).claims["groups_"] == ["a", "b"]

    login = start_login(sp, idp)
    transient = answer(sp, idp, login, name_id_format=idp_kit.NAMEID_TRANSIENT)
    with pytest.raises(UnmappableIdentity) as caught:
        finish(sp, login, transient)
    assert "persistent NameID" in caught.value.detail
    assert len(store) == 1, "only the first assertion was accepted"


def test_an_alias_is_read_only_from_its_attribute_never_from_a_namesake(
    idp: SamlIdp, store: MemoryStore
) -> None:
    sp = build_sp(
        [saml_entry(idp_metadata_url=idp.metadata_url, attributes={"groups_": ENTRA_GROUPS})],
        store,
    )["corp"]
    login = start_login(sp, idp)
    # The aliased attribute is missing; others carry the short name as Name or FriendlyName.
    attributes = (
        SamlAttribute("groups_", ("by-name",)),
        SamlAttribute("urn:oid:5", ("by-friendly-name",), "groups_"),
    )
    principal = finish(sp, login, answer(sp, idp, login, attributes=attributes))
    assert "groups_" not in principal.claims
    assert principal.claims["urn:oid:5"] == "by-friendly-name"


# --------------------------------------------------------------------------- SP metadata


def test_sp_metadata_names_the_acs_and_requires_signed_assertions(sp: SamlServiceProvider) -> None:
    xml = sp.metadata()
    root = etree.fromstring(xml.encode("utf-8"))
    ns = {"md": idp_kit.NS_MD, "ds": idp_kit.NS_DS}
    assert root.get("entityID") == SP_ENTITY_ID
    descriptor = root.find("md:SPSSODescriptor", ns)
    assert descriptor.get("WantAssertionsSigned") == "true"
    assert descriptor.get("AuthnRequestsSigned") == "false"
    acs = descriptor.find("md:AssertionConsumerService", ns)
    assert acs.get("Location") == "https://auth.example.chat/v1/saml/corp/acs"
    assert acs.get("Binding") == OneLogin_Saml2_Constants.BINDING_HTTP_POST
    assert root.find("ds:Signature", ns) is None
    assert metadata_problems(xml) == []


def metadata_problems(xml: str) -> list[str]:
    """python3-saml's own check of an SP metadata document."""
    checker = OneLogin_Saml2_Settings(
        {"sp": {"entityId": "urn:x", "assertionConsumerService": {"url": "https://x.example/acs"}}},
        sp_validation_only=True,
    )
    return list(checker.validate_metadata(xml))


def test_with_a_key_authn_requests_and_metadata_are_signed(
    idp: SamlIdp, store: MemoryStore
) -> None:
    keys = sp_keys()
    sp = build_sp(
        [saml_entry(idp_metadata_url=idp.metadata_url, sp_key=keys.key_pem, sp_cert=keys.cert_pem)],
        store,
    )["corp"]

    url, request_id = sp.authorization_request("txn-1")
    seen = idp.read_authn_request(url, sp_cert=keys.cert_pem)
    assert seen.signed and seen.id == request_id
    assert parse_qs(urlsplit(url).query)["SigAlg"] == [OneLogin_Saml2_Constants.RSA_SHA256]
    with pytest.raises(InvalidSignature):
        idp.read_authn_request(url, sp_cert=rogue_keys().cert_pem)

    xml = sp.metadata()
    root = etree.fromstring(xml.encode("utf-8"))
    descriptor = root.find(f"{{{idp_kit.NS_MD}}}SPSSODescriptor")
    assert descriptor.get("AuthnRequestsSigned") == "true"
    assert keys.cert_base64 in "".join(xml.split())
    assert metadata_problems(xml) == []
    assert verify_signature(xml, root.get("ID"), keys.cert_pem)
    assert not verify_signature(xml, root.get("ID"), rogue_keys().cert_pem)


def test_an_sp_key_that_does_not_match_its_certificate_is_a_config_error(
    idp: SamlIdp, store: MemoryStore
) -> None:
    other = make_key_pair("someone-else")
    with pytest.raises(ConfigError) as caught:
        build_sp(
            [
                saml_entry(
                    idp_metadata_url=idp.metadata_url,
                    sp_key=sp_keys().key_pem,
                    sp_cert=other.cert_pem,
                )
            ],
            store,
        )
    assert caught.value.problems == ["providers[1].sp_cert: does not belong to sp_key"]


# --------------------------------------------------------------------------- attacks

WRAPPINGS: dict[str, Callable[[str], str]] = {
    "forged assertion before the signed one": idp_kit.xsw_forged_before,
    "forged assertion after the signed one": idp_kit.xsw_forged_after,
    "signed assertion wrapped inside the forged one": idp_kit.xsw_wrapped,
    "signed assertion inside the forged one's ds:Object": idp_kit.xsw_in_signature_object,
    "signed assertion hidden in samlp:Extensions": idp_kit.xsw_in_extensions,
    "a second, unsigned assertion": idp_kit.with_second_assertion,
}
# The same attacks on a Response whose only signature is the Response's: those that
# move the assertion break that signature; these keep it intact.
RESPONSE_WRAPPINGS: dict[str, Callable[[str], str]] = {
    "forged assertion before the genuine one": idp_kit.xsw_forged_before,
    "forged assertion after the genuine one": idp_kit.xsw_forged_after,
    "genuine assertion wrapped inside the forged one": idp_kit.xsw_wrapped,
    "genuine assertion hidden in samlp:Extensions": idp_kit.xsw_in_extensions,
    "a second, unsigned assertion": idp_kit.with_second_assertion,
    "signed Response inside the forged one's ds:Object": idp_kit.xsw_response_in_signature_object,
    "signed Response hidden in the forged one's samlp:Extensions": (
        idp_kit.xsw_response_in_extensions
    ),
    "signed Response beside the forged assertion": idp_kit.xsw_response_beside_forgery,
}
MODES = ("either", "assertion", "response")
SHA1_REFUSAL = "SHA-1 is not accepted; configure the IdP to sign with RSA-SHA256"


def sp_in_mode(idp: SamlIdp, store: MemoryStore, mode: str) -> SamlServiceProvider:
    """The ``corp`` SP with ``signature: mode``."""
    return build_sp([saml_entry(idp_metadata_url=idp.metadata_url, signature=mode)], store)["corp"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wrap", WRAPPINGS.values(), ids=WRAPPINGS.keys())
def test_signature_wrapping_is_refused(
    wrap: Callable[[str], str], mode: str, idp: SamlIdp, store: MemoryStore
) -> None:
    sp = sp_in_mode(idp, store, mode)
    login = start_login(sp, idp)
    genuine = answer(sp, idp, login, assertion_id="_genuine")
    attack = wrap(genuine)
    # The attack keeps the genuine signature intact and names someone else.
    assert verify_signature(attack, "_genuine", idp.signing.cert_pem)
    assert ">admin<" in attack
    error = refused(sp, store, login, attack)
    assert error.detail == "expected exactly one assertion"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wrap", RESPONSE_WRAPPINGS.values(), ids=RESPONSE_WRAPPINGS.keys())
def test_signature_wrapping_of_a_response_only_signature_is_refused(
    wrap: Callable[[str], str], mode: str, idp: SamlIdp, store: MemoryStore
) -> None:
    sp = sp_in_mode(idp, store, mode)
    login = start_login(sp, idp)
    genuine = answer(
        sp, idp, login, sign_assertion=False, sign_response=True, response_id="_genuine"
    )
    # Untouched, it signs in (at another SP instance, so that this one's cache stays empty).
    accepting = sp_in_mode(idp, MemoryStore(), "response")
    assert finish(accepting, login, genuine).subject == "alice-0001"
    attack = wrap(genuine)
    assert ">admin<" in attack
    error = refused(sp, store, login, attack)
    assert error.detail in {
        "expected exactly one assertion",
        "signature not accepted",
        "the assertion is not signed",
    }
    if wrap.__name__.startswith("xsw_response"):
        # The genuine signed Response is intact, only moved.
        assert verify_signature(attack, "_genuine", idp.signing.cert_pem)


def test_a_comment_in_the_name_id_never_truncates_it(sp: SamlServiceProvider, idp: SamlIdp) -> None:
    login = start_login(sp, idp)
    signed = answer(sp, idp, login, name_id="admin.evil@example.com", assertion_id="_a1")
    attack = idp_kit.with_comment_in_name_id(signed, split_at=5)
    assert "<saml:NameID" in attack and "admin<!---->.evil@example.com" in attack
    assert verify_signature(attack, "_a1", idp.signing.cert_pem)
    principal = finish(sp, login, attack)
    assert principal.subject == "admin.evil@example.com"
    assert principal.claims["name_id"] == "admin.evil@example.com"


def response_signed_by(keys: idp_kit.KeyPair) -> dict[str, Any]:
    return {"key": keys.key_pem, "cert": keys.cert_pem}


PLACEMENTS: dict[str, dict[str, bool]] = {
    "assertion": {"sign_assertion": True, "sign_response": False},
    "response": {"sign_assertion": False, "sign_response": True},
    "both": {"sign_assertion": True, "sign_response": True},
    "none": {"sign_assertion": False, "sign_response": False},
}
# What each `signature` mode makes of each placement: None is a sign-in, else the reason.
PLACEMENT_OUTCOMES: list[tuple[str, str, str | None]] = [
    ("either", "assertion", None),
    ("either", "response", None),
    ("either", "both", None),
    ("either", "none", "the response carries no signature"),
    ("assertion", "assertion", None),
    ("assertion", "response", "the assertion is not signed"),
    ("assertion", "both", None),
    ("assertion", "none", "the assertion is not signed"),
    ("response", "assertion", "the response is not signed"),
    ("response", "response", None),
    ("response", "both", None),
    ("response", "none", "the response is not signed"),
]


@pytest.mark.parametrize(("mode", "placement", "reason"), PLACEMENT_OUTCOMES)
def test_the_signature_mode_decides_which_placements_sign_in(
    mode: str, placement: str, reason: str | None, idp: SamlIdp, store: MemoryStore
) -> None:
    sp = sp_in_mode(idp, store, mode)
    login = start_login(sp, idp)
    xml = answer(sp, idp, login, **PLACEMENTS[placement])
    if reason is None:
        assert finish(sp, login, xml).subject == "alice-0001"
        assert len(store) == 1  # the assertion is now spent
    else:
        assert refused(sp, store, login, xml).detail == reason


SIGNATURE_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "signed by another certificate": (response_signed_by(rogue_keys()), "signature not accepted"),
    "RSA-SHA1 signature": ({"signature_alg": "rsa-sha1"}, SHA1_REFUSAL),
    "SHA-1 digest": ({"digest": "sha1"}, SHA1_REFUSAL),
}


@pytest.mark.parametrize("placement", ["assertion", "response", "both"])
@pytest.mark.parametrize("attack", SIGNATURE_ATTACKS.values(), ids=SIGNATURE_ATTACKS.keys())
def test_signature_attacks_are_refused(
    attack: tuple[dict[str, Any], str],
    placement: str,
    sp: SamlServiceProvider,
    idp: SamlIdp,
    store: MemoryStore,
) -> None:
    fields, reason = attack
    login = start_login(sp, idp)
    error = refused(sp, store, login, answer(sp, idp, login, **PLACEMENTS[placement], **fields))
    assert error.detail == reason
    if reason == SHA1_REFUSAL:
        assert (error.log_detail or "").startswith(SHA1_REFUSAL)


def test_a_signature_with_a_foreign_transform_is_refused_before_it_is_checked(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    root = etree.fromstring(answer(sp, idp, login).encode("utf-8"))
    transforms = root.find(
        "saml:Assertion/ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms", idp_kit.NSMAP
    )
    xslt = etree.SubElement(transforms, f"{{{idp_kit.NS_DS}}}Transform")
    xslt.set("Algorithm", "http://www.w3.org/TR/1999/REC-xslt-19991116")
    error = refused(sp, store, login, etree.tostring(root, encoding="unicode"))
    assert error.detail == "signature not accepted"
    assert "xslt" in (error.log_detail or "")


PARSER_ATTACKS: dict[str, str] = {
    "external entity (XXE)": idp_kit.XXE_FILE,
    "external parameter entity": idp_kit.XXE_PARAMETER,
    "entity expansion (billion laughs)": idp_kit.BILLION_LAUGHS,
}


@pytest.mark.parametrize("subset", PARSER_ATTACKS.values(), ids=PARSER_ATTACKS.keys())
def test_dtds_and_entities_are_refused(
    subset: str, sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    attack = idp_kit.with_doctype(answer(sp, idp, login), subset)
    assert "<!DOCTYPE" in attack and "&NAMEID;" in attack
    error = refused(sp, store, login, attack)
    assert error.detail == "malformed SAML response"


def test_a_replayed_assertion_is_refused(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    xml = answer(sp, idp, login)
    assert finish(sp, login, xml).subject == "alice-0001"
    error = refused_after(sp, store, login, xml, accepted=1)
    assert error.detail == "assertion already used"


def test_a_replay_under_a_new_request_is_refused(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    first = start_login(sp, idp)
    finish(sp, first, answer(sp, idp, first, assertion_id="_once"))
    second = start_login(sp, idp)
    # Even a re-signed response cannot bring the same assertion id back.
    error = refused_after(
        sp, store, second, answer(sp, idp, second, assertion_id="_once"), accepted=1
    )
    assert error.detail == "assertion already used"


ADDRESSING_ATTACKS: dict[str, tuple[dict[str, Any], str]] = {
    "Destination of another SP": (
        {"destination": "https://other.example/acs"},
        "wrong destination",
    ),
    "Destination extending our ACS URL": (
        {"destination": "https://auth.example.chat/v1/saml/corp/acs-evil"},
        "wrong destination",
    ),
    "Recipient of another SP": (
        {"recipient": "https://other.example/acs"},
        "subject confirmation failed",
    ),
    "Recipient containing our ACS URL": (
        {"recipient": "https://other.example/?next=https://auth.example.chat/v1/saml/corp/acs"},
        "subject confirmation failed",
    ),
    "no Recipient": ({"recipient": None}, "subject confirmation failed"),
    "Audience of another SP": ({"audience": "https://other.example/sp"}, "audience not accepted"),
    "no Audience": ({"audience": None}, "audience not accepted"),
    "another Issuer": ({"issuer": "https://evil.example/idp"}, "issuer not accepted"),
    "InResponseTo of another request": (
        {"in_response_to": "_another"},
        "response to another request",
    ),
    "unsolicited while a request is pending": ({"in_response_to": None}, "unsolicited response"),
    "an assertion signed for another request": (
        {"subject_in_response_to": "_another"},
        "subject confirmation failed",
    ),
    "an unsolicited assertion passed off as the answer": (
        {"subject_in_response_to": None},
        "subject confirmation failed",
    ),
}


@pytest.mark.parametrize(
    ("fields", "detail"), ADDRESSING_ATTACKS.values(), ids=ADDRESSING_ATTACKS.keys()
)
def test_responses_for_someone_else_are_refused(
    fields: dict[str, Any], detail: str, sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    error = refused(sp, store, login, answer(sp, idp, login, **fields))
    assert error.detail == detail


def test_without_a_destination_the_signed_recipient_decides(
    sp: SamlServiceProvider, idp: SamlIdp
) -> None:
    login = start_login(sp, idp)
    assert finish(sp, login, answer(sp, idp, login, destination=None)).subject == "alice-0001"


def test_an_unsolicited_response_is_refused_unless_idp_initiated_logins_are_allowed(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    assert not sp.allow_idp_initiated
    error = refused(sp, store, None, answer(sp, idp, None))
    assert error.detail == "unsolicited response"


# Times in minutes from when the test runs.
TIME_ATTACKS: dict[str, tuple[dict[str, float], str]] = {
    "expired ten minutes ago": ({"not_on_or_after": -10}, "assertion expired"),
    # python3-saml's own drift is 300 s; the provider's leeway (60 s) must be what counts.
    "Conditions expired two minutes ago": (
        {"not_on_or_after": -2, "subject_not_on_or_after": 5},
        "assertion expired",
    ),
    "not valid for two more minutes": ({"not_before": 2}, "assertion not yet valid"),
    "not valid for ten more minutes": ({"not_before": 10}, "assertion not yet valid"),
    "confirmation expired": ({"subject_not_on_or_after": -1}, "subject confirmation failed"),
}


@pytest.mark.parametrize(("minutes", "detail"), TIME_ATTACKS.values(), ids=TIME_ATTACKS.keys())
def test_assertions_outside_their_time_window_are_refused(
    minutes: dict[str, float],
    detail: str,
    sp: SamlServiceProvider,
    idp: SamlIdp,
    store: MemoryStore,
) -> None:
    login = start_login(sp, idp)
    times = {field: in_(offset) for field, offset in minutes.items()}
    error = refused(sp, store, login, answer(sp, idp, login, **times))
    assert error.detail == detail


def test_clock_skew_within_the_leeway_is_accepted(sp: SamlServiceProvider, idp: SamlIdp) -> None:
    login = start_login(sp, idp)
    xml = answer(sp, idp, login, not_before=in_(0.5), not_on_or_after=in_(5))
    assert finish(sp, login, xml).subject == "alice-0001"


def test_an_encrypted_assertion_is_refused(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    root = etree.fromstring(answer(sp, idp, login).encode("utf-8"))
    assertion = root.find("saml:Assertion", idp_kit.NSMAP)
    encrypted = etree.Element(f"{{{idp_kit.NS_SAML}}}EncryptedAssertion")
    assertion.addprevious(encrypted)
    root.remove(assertion)
    error = refused(sp, store, login, etree.tostring(root, encoding="unicode"))
    assert error.detail == "encrypted assertions are not supported"


@pytest.mark.parametrize(
    "body",
    ["not base64 at all!", "PHNhbWxwOlJlc3BvbnNl", base64.b64encode(b"hello").decode(), ""],
    ids=["bad base64", "truncated XML", "not XML", "empty"],
)
def test_malformed_bodies_are_refused(
    body: str, sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    error = refused(sp, store, login, body, raw=True)
    assert error.detail == "malformed SAML response"


def test_base64_wrapped_in_lines_is_accepted(sp: SamlServiceProvider, idp: SamlIdp) -> None:
    login = start_login(sp, idp)
    encoded = encode(answer(sp, idp, login))
    wrapped = "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert finish(sp, login, wrapped, raw=True).subject == "alice-0001"


def test_a_body_over_one_mebibyte_is_refused(
    sp: SamlServiceProvider, idp: SamlIdp, store: MemoryStore
) -> None:
    login = start_login(sp, idp)
    padding = (SamlAttribute("padding", ("x" * (2 * 1024 * 1024),)),)
    body = encode(answer(sp, idp, login, attributes=padding))
    assert len(body) > 2_000_000
    refused(sp, store, login, body, raw=True, error=PayloadTooLarge)


@pytest.mark.parametrize(
    ("status", "subcode", "error"),
    [
        ("Responder", "RequestDenied", AccessDenied),
        ("Responder", "AuthnFailed", AccessDenied),
        ("Requester", "UnknownPrincipal", AccessDenied),
        ("Responder", None, AccessDenied),
        ("Requester", "UnsupportedBinding", InvalidToken),
        ("VersionMismatch", None, InvalidToken),
    ],
)
def test_an_error_status_becomes_one_safe_outcome(
    status: str,
    subcode: str | None,
    error: type[BrokerError],
    sp: SamlServiceProvider,
    idp: SamlIdp,
    store: MemoryStore,
) -> None:
    login = start_login(sp, idp)
    message = "user\nnot allowed"
    xml = answer(sp, idp, login, status=status, status_subcode=subcode, status_message=message)
    caught = refused(sp, store, login, xml, error=error)
    assert "user" not in caught.detail
    assert "usernot allowed" in (caught.log_detail or ""), "control characters stay out of logs"


# --------------------------------------------------------------------------- IdP metadata


def test_metadata_from_a_file(idp: SamlIdp, store: MemoryStore, tmp_path: Any) -> None:
    path = tmp_path / "corp-idp.xml"
    path.write_text(idp.metadata_xml())
    sp = build_sp([saml_entry(idp_metadata_url=REMOVE, idp_metadata_file=str(path))], store)["corp"]
    assert sp.ready()
    login = start_login(sp, idp)
    assert finish(sp, login, answer(sp, idp, login)).issuer == idp.entity_id
    assert idp.metadata_requests == 0


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (None, "cannot read"),
        ("<md:EntityDescriptor", "not a well-formed XML document"),
        ("<x/>", "not md:EntityDescriptor"),
    ],
)
def test_an_unusable_metadata_file_is_a_config_error(
    document: str | None, problem: str, store: MemoryStore, tmp_path: Any
) -> None:
    path = tmp_path / "idp.xml"
    if document is not None:
        path.write_text(document)
    with pytest.raises(ConfigError) as caught:
        build_sp([saml_entry(idp_metadata_url=REMOVE, idp_metadata_file=str(path))], store)
    [message] = caught.value.problems
    assert message.startswith("providers[1].idp_metadata_file: ")
    assert problem in message


def test_building_a_provider_fetches_no_metadata(idp: SamlIdp, store: MemoryStore) -> None:
    """``check`` builds the providers too, and contacts no IdP."""
    config = build_config(
        valid_config_dict(
            providers=[provider_dict("oidc"), saml_entry(idp_metadata_url=idp.metadata_url)]
        )
    )
    sp = built_providers(config, store=store).saml["corp"]
    assert not sp.ready()
    assert idp.metadata_requests == 0


def test_metadata_from_a_url_is_fetched_once_at_start_up(
    sp: SamlServiceProvider, idp: SamlIdp
) -> None:
    assert sp.ready() and idp.metadata_requests == 1
    for _ in range(3):
        start_login(sp, idp)
    assert idp.metadata_requests == 1


def url_sp(idp: SamlIdp, store: MemoryStore, clock: FakeClock) -> SamlServiceProvider:
    return SamlServiceProvider(
        name="corp",
        acs_url=Endpoints(PUBLIC_URL).acs_url("corp"),
        slo_url=Endpoints(PUBLIC_URL).slo_url("corp"),
        metadata_url=Endpoints(PUBLIC_URL).metadata_url("corp"),
        sp_entity_id=SP_ENTITY_ID,
        metadata_source=UrlMetadataSource(idp.metadata_url),
        store=store,
        refresh_interval=3600,
        retry_interval=300,
        clock=clock,
    )


def test_a_failed_refresh_keeps_the_last_good_copy(
    idp: SamlIdp, store: MemoryStore, clock: FakeClock
) -> None:
    sp = url_sp(idp, store, clock)
    assert sp.metadata_cache.refresh()
    old_keys = idp.signing

    idp.fault = MetadataFault(status=503)
    clock.advance(3600)
    login = start_login(sp, idp)  # the refresh is due: it fails, the old copy serves
    assert idp.metadata_requests == 2
    assert "503" in (sp.metadata_cache.last_error or "")
    assert finish(sp, login, answer(sp, idp, login)).subject == "alice-0001"

    idp.fault = MetadataFault(status=200, body=b"<html>maintenance</html>")
    clock.advance(299)
    start_login(sp, idp)
    assert idp.metadata_requests == 2, "a failed refresh waits retry_interval"
    clock.advance(1)
    login = start_login(sp, idp)
    assert idp.metadata_requests == 3
    assert "not md:EntityDescriptor" in (sp.metadata_cache.last_error or "")
    assert finish(sp, login, answer(sp, idp, login)).subject == "alice-0001"

    # The IdP rotates its key; once the refresh succeeds, only the new one is trusted.
    idp.fault = None
    idp.signing = make_key_pair("test-idp-next")
    clock.advance(300)
    login = start_login(sp, idp)
    assert idp.metadata_requests == 4 and sp.metadata_cache.last_error is None
    assert finish(sp, login, answer(sp, idp, login)).subject == "alice-0001"
    stale = answer(sp, idp, login, **response_signed_by(old_keys))
    assert refused_after(sp, store, login, stale, accepted=3).detail == "signature not accepted"


def test_an_idp_unreachable_at_start_up_is_retried(
    idp: SamlIdp, store: MemoryStore, clock: FakeClock
) -> None:
    idp.fault = MetadataFault(status=500)
    sp = url_sp(idp, store, clock)
    assert not sp.metadata_cache.refresh() and not sp.ready()

    with pytest.raises(UpstreamUnavailable) as caught:
        sp.authorization_request("txn-1")
    assert caught.value.retry_after == 300
    assert idp.metadata_requests == 1

    idp.fault = None
    clock.advance(300)
    start_login(sp, idp)
    assert sp.ready() and idp.metadata_requests == 2


def test_a_config_with_an_unreachable_metadata_url_still_starts(
    store: MemoryStore, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/metadata"
    sp = build_sp([saml_entry(idp_metadata_url=url)], store)["corp"]
    assert not sp.ready()
    response = idp_kit.build_response(
        in_response_to="_r",
        destination=sp.acs_url,
        audience=sp.entity_id,
        recipient=sp.acs_url,
        name_id="alice-0001",
        issuer="https://idp.test.example/saml",
    )
    with pytest.raises(UpstreamUnavailable):
        sp.finish(encode(response), request_id="_r", relay_state="txn")
    assert "unreachable" in (sp.metadata_cache.last_error or "")


def test_file_metadata_source_reads_the_file(idp: SamlIdp, tmp_path: Any) -> None:
    path = tmp_path / "idp.xml"
    path.write_text(idp.metadata_xml())
    assert FileMetadataSource(str(path)).read() == idp.metadata_xml().encode()


METADATA_PROBLEMS: dict[str, tuple[Callable[[SamlIdp], str], str]] = {
    "SSO over plain http to a remote host": (
        lambda idp: idp.metadata_xml(sso_url="http://idp.example.com/sso"),
        "must be an https URL",
    ),
    "no signing certificate": (
        lambda idp: idp.metadata_xml().replace('use="signing"', 'use="encryption"'),
        "no signing certificate",
    ),
    "no HTTP-Redirect SSO": (
        lambda idp: idp.metadata_xml().replace("HTTP-Redirect", "HTTP-POST"),
        "HTTP-Redirect",
    ),
    "two IdPs in one document": (
        lambda idp: (
            f'<md:EntitiesDescriptor xmlns:md="{idp_kit.NS_MD}">'
            + idp.metadata_xml()
            + idp.metadata_xml().replace(idp.entity_id, "https://other.example/idp")
            + "</md:EntitiesDescriptor>"
        ),
        "exactly one entity",
    ),
    "expired": (
        lambda idp: idp.metadata_xml().replace(
            "<md:EntityDescriptor ", '<md:EntityDescriptor validUntil="2020-01-01T00:00:00Z" '
        ),
        "expired",
    ),
    "a DTD": (
        lambda idp: '<!DOCTYPE md:EntityDescriptor [<!ENTITY x "y">]>' + idp.metadata_xml(),
        "without DTD",
    ),
}


@pytest.mark.parametrize(
    ("make", "problem"), METADATA_PROBLEMS.values(), ids=METADATA_PROBLEMS.keys()
)
def test_unusable_idp_metadata_is_refused(
    make: Callable[[SamlIdp], str], problem: str, idp: SamlIdp
) -> None:
    with pytest.raises(MetadataError, match=problem):
        parse_idp_metadata(make(idp).encode("utf-8"))


def test_idp_metadata_keeps_every_signing_certificate(idp: SamlIdp) -> None:
    nxt = make_key_pair("test-idp-next")
    idp.published = (idp.signing, nxt)
    metadata = parse_idp_metadata(idp.metadata_xml().encode("utf-8"))
    assert metadata.entity_id == idp.entity_id
    assert metadata.sso_url == idp.sso_url
    assert metadata.signing_certificates == (idp.signing.cert_base64, nxt.cert_base64)
