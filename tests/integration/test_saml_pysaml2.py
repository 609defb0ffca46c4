"""SAML sign-ins through an IdP nobody here wrote: pysaml2's ``saml2.server.Server``,
signing with the ``xmlsec1`` binary, answering the real AuthnRequest of the broker's
``GET /v1/login/corp`` and posting to the broker's HTTP ACS, with the settings real IdPs
use: every signature placement, SHA-1, each NameID format, key rollover, signed
AuthnRequests and URI attribute names.

Every sign-in is checked where it lands: the session, and what the broker asked AWS.
Every refusal: the error redirect, no session, no credentials, no AWS call.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.samlp import STATUS_SUCCESS

from identity.config.document import BrokerConfig
from tests.fixtures.apps import broker_config
from tests.fixtures.configs import provider_dict
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.pysaml2_idp import Posted, Pysaml2Idp
from tests.fixtures.recorder import sts_tags
from tests.fixtures.saml_idp import sp_keys

SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
COOKIE = "chime_broker_session"
SHA1_REFUSAL = "SHA-1 is not accepted; configure the IdP to sign with RSA-SHA256"
# pysaml2 turns these local names into urn:oid Names with the FriendlyName kept.
NS = {
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
}
SHIBBOLETH_ATTRIBUTES = {"displayName": ["Alice Example"], "mail": ["alice@example.com"]}


def corp_config(url: str, aws: Any, idp: Pysaml2Idp, **entry: Any) -> BrokerConfig:
    """The broker at ``url`` with one SAML provider ``corp`` whose IdP is ``idp``."""
    mapping = entry.pop(
        "map",
        {"user_id": "corp-{name_id}", "display_name": "{displayName}", "tags": {"mail": "{mail}"}},
    )
    return broker_config(
        aws,
        service__public_url=url,
        service__allowed_origins=[SPA],
        service__allowed_return_to=[SPA_HOME],
        service__default_return_to=SPA_HOME,
        providers=[
            provider_dict(
                "saml",
                idp_metadata_url=None,
                idp_metadata_file=str(idp.metadata_file),
                sp_entity_id=f"{url}/v1/saml/corp/metadata",
                map=mapping,
                **entry,
            )
        ],
    )


@dataclass
class Corp:
    """A broker and a browser (a cookie jar that follows no redirect by itself)."""

    broker: LiveServer
    idp: Pysaml2Idp
    http: LoopbackSession

    def begin(self) -> str:
        """``GET /v1/login/corp``: the redirect to the IdP carrying the AuthnRequest."""
        response = self.http.get(
            f"{self.broker.url}/v1/login/corp",
            params={"return_to": SPA_HOME},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 302, response.text
        return str(response.headers["Location"])

    def metadata(self) -> str:
        """The broker's SP metadata."""
        return requests.get(f"{self.broker.url}/v1/saml/corp/metadata", timeout=10).text

    def post(self, posted: Posted) -> requests.Response:
        return self.http.post(posted.url, data=posted.fields, allow_redirects=False, timeout=30)

    def sign_in(self, **answer: Any) -> requests.Response:
        """A whole sign-in: begin, the IdP's answer, its POST to the ACS."""
        posted = self.idp.answer(self.begin(), **answer)
        assert posted.url == f"{self.broker.url}/v1/saml/corp/acs"
        return self.post(posted)

    def api(self, method: str, path: str) -> requests.Response:
        return self.http.request(
            method, f"{self.broker.url}{path}", headers={"Origin": SPA}, timeout=10
        )


@pytest.fixture
def start_corp(
    live_broker: Callable[..., LiveServer], aws: Any, pysaml2_idp: Pysaml2Idp
) -> Callable[..., Corp]:
    """Start a broker with ``corp`` (entry fields as given) and introduce it to the IdP."""

    def start(**entry: Any) -> Corp:
        broker = live_broker(lambda url: corp_config(url, aws, pysaml2_idp, **entry))
        metadata = requests.get(f"{broker.url}/v1/saml/corp/metadata", timeout=10)
        assert metadata.status_code == 200
        pysaml2_idp.trust_sp(metadata.text)
        return Corp(broker, pysaml2_idp, LoopbackSession())

    return start


def assert_signed_in(corp: Corp, done: requests.Response, aws: Any, user_id: str) -> None:
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == SPA_HOME
    assert COOKIE in done.cookies or corp.http.cookies.get(COOKIE)
    assert corp.api("GET", "/v1/session").json()["user_id"] == user_id
    issued = corp.api("POST", "/v1/credentials")
    assert issued.status_code == 200, issued.text
    [call] = aws.recorder.calls("AssumeRole")
    assert call["SourceIdentity"] == user_id


def assert_refused(corp: Corp, done: requests.Response, aws: Any, error: str) -> None:
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == f"{SPA_HOME}?error={error}"
    assert corp.http.cookies.get(COOKIE) is None
    assert "access_key_id" not in done.text
    assert corp.api("GET", "/v1/session").status_code == 401
    assert aws.recorder.requests() == []


# --------------------------------------------------------------------------- signatures

PLACEMENTS: list[tuple[str, str, str | None]] = [
    ("either", "assertion", None),
    ("either", "response", None),
    ("either", "both", None),
    ("either", "none", "invalid_token"),
    ("assertion", "response", "invalid_token"),
    ("assertion", "both", None),
    ("response", "response", None),
    ("response", "assertion", "invalid_token"),
]


@pytest.mark.parametrize(("mode", "placement", "error"), PLACEMENTS)
def test_each_signature_placement_signs_in_as_the_mode_allows(
    mode: str, placement: str, error: str | None, start_corp: Callable[..., Corp], aws: Any
) -> None:
    corp = start_corp(signature=mode)
    done = corp.sign_in(name_id="alice-0001", attributes=SHIBBOLETH_ATTRIBUTES, placement=placement)
    if error is None:
        assert_signed_in(corp, done, aws, "corp-alice-0001")
        [call] = aws.recorder.calls("AssumeRole")
        assert sts_tags(call)["mail"] == "alice@example.com"
        assert corp.api("GET", "/v1/session").json()["display_name"] == "Alice Example"
    else:
        assert_refused(corp, done, aws, error)


def test_sha1_is_refused_and_the_log_says_so_in_words(
    start_corp: Callable[..., Corp], aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    corp = start_corp()
    with caplog.at_level(logging.INFO):
        done = corp.sign_in(name_id="alice-0001", placement="both", hash_alg="sha1")
    assert_refused(corp, done, aws, "invalid_token")
    reasons = [getattr(r, "fields", {}).get("reason", "") for r in caplog.records]
    assert [reason for reason in reasons if reason.startswith(SHA1_REFUSAL)], reasons


def test_key_rollover_signs_in_before_and_after_the_idp_switches_keys(
    start_corp: Callable[..., Corp], aws: Any, pysaml2_idp: Pysaml2Idp
) -> None:
    old = pysaml2_idp.keys
    pysaml2_idp.publish_next_key()  # the broker reads both certificates at start-up
    corp = start_corp()
    assert_signed_in(
        corp,
        corp.sign_in(name_id="alice-0001", attributes=SHIBBOLETH_ATTRIBUTES),
        aws,
        "corp-alice-0001",
    )

    pysaml2_idp.rotate_key()
    assert pysaml2_idp.keys is not old
    pysaml2_idp.trust_sp(corp.metadata())
    corp.http.cookies.clear()
    done = corp.sign_in(name_id="alice-0001", attributes=SHIBBOLETH_ATTRIBUTES)
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME, done.text
    assert corp.api("GET", "/v1/session").json()["user_id"] == "corp-alice-0001"


def test_a_certificate_the_metadata_does_not_publish_is_refused(
    start_corp: Callable[..., Corp], aws: Any, pysaml2_idp: Pysaml2Idp
) -> None:
    corp = start_corp()
    pysaml2_idp.publish_next_key()
    pysaml2_idp.rotate_key()  # the broker still holds the metadata with the old key only
    pysaml2_idp.trust_sp(corp.metadata())
    done = corp.sign_in(name_id="alice-0001", attributes=SHIBBOLETH_ATTRIBUTES)
    assert_refused(corp, done, aws, "invalid_token")


def test_signed_authn_requests_verify_at_the_idp(
    start_corp: Callable[..., Corp], aws: Any, pysaml2_idp: Pysaml2Idp
) -> None:
    pysaml2_idp.want_authn_requests_signed = True
    keys = sp_keys()
    corp = start_corp(sp_key=keys.key_pem, sp_cert=keys.cert_pem)
    url = corp.begin()
    assert pysaml2_idp.read_authn_request(url).signed
    done = corp.post(
        pysaml2_idp.answer(url, name_id="alice-0001", attributes=SHIBBOLETH_ATTRIBUTES)
    )
    assert_signed_in(corp, done, aws, "corp-alice-0001")


# --------------------------------------------------------------------------- NameIDs


@pytest.mark.parametrize("name_id_format", ["persistent", "email", "unspecified"])
def test_each_stable_name_id_format_signs_in_and_is_asked_for(
    name_id_format: str, start_corp: Callable[..., Corp], aws: Any, pysaml2_idp: Pysaml2Idp
) -> None:
    # An email-address NameID can change: read as the user id only when allowed outright.
    allow = {"allow_mutable_user_id": True} if name_id_format == "email" else {}
    corp = start_corp(name_id_format=name_id_format, **allow)
    url = corp.begin()
    asked = pysaml2_idp.read_authn_request(url).name_id_format
    assert asked is not None and asked.endswith(
        {"persistent": "persistent", "email": "emailAddress", "unspecified": "unspecified"}[
            name_id_format
        ]
    )
    done = corp.post(
        pysaml2_idp.answer(
            url,
            name_id="alice@example.com",
            name_id_format=name_id_format,
            attributes=SHIBBOLETH_ATTRIBUTES,
        )
    )
    assert_signed_in(corp, done, aws, "corp-alice@example.com")


def test_a_transient_name_id_is_refused_as_an_identity(
    start_corp: Callable[..., Corp], aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    corp = start_corp()
    with caplog.at_level(logging.INFO):
        done = corp.sign_in(
            name_id="_3f9a1c0d", name_id_format="transient", attributes=SHIBBOLETH_ATTRIBUTES
        )
    assert_refused(corp, done, aws, "unmappable_identity")
    assert "transient NameID" in caplog.text


# --------------------------------------------------------------------------- attributes

ENTRA_OBJECT_ID = "http://schemas.microsoft.com/identity/claims/objectidentifier"
ENTRA_DISPLAY_NAME = "http://schemas.microsoft.com/identity/claims/displayname"
ENTRA_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
ENTRA_ALIASES = {
    "object_id": ENTRA_OBJECT_ID,
    "display_name": ENTRA_DISPLAY_NAME,
    "groups": ENTRA_GROUPS,
}
ENTRA_ATTRIBUTES = {
    ENTRA_OBJECT_ID: ["6f1c2a3b-0d4e-4f5a-8b9c-0d1e2f3a4b5c"],
    ENTRA_DISPLAY_NAME: ["Alice Example"],
    ENTRA_GROUPS: ["chat-users", "admins"],
}


def test_entra_style_uri_attributes_reach_the_display_name_and_tags_through_aliases(
    start_corp: Callable[..., Corp], aws: Any
) -> None:
    corp = start_corp(
        attributes=ENTRA_ALIASES,
        map={
            "user_id": "corp-{object_id}",
            "display_name": "{display_name}",
            "tags": {"team": "{display_name|lower}"},
            "require": {"groups": {"any_of": ["chat-users"]}},
        },
    )
    # A transient NameID does no harm when the user id comes from a stable attribute.
    done = corp.sign_in(name_id="_5e0b", name_id_format="transient", attributes=ENTRA_ATTRIBUTES)
    user_id = "corp-6f1c2a3b-0d4e-4f5a-8b9c-0d1e2f3a4b5c"
    assert_signed_in(corp, done, aws, user_id)
    assert corp.api("GET", "/v1/session").json()["display_name"] == "Alice Example"
    [call] = aws.recorder.calls("AssumeRole")
    assert sts_tags(call) == {aws.user_tag: user_id, "team": "alice example"}


def test_a_require_rule_on_an_alias_refuses_who_it_should(
    start_corp: Callable[..., Corp], aws: Any
) -> None:
    corp = start_corp(
        attributes=ENTRA_ALIASES,
        map={"user_id": "corp-{object_id}", "require": {"groups": {"any_of": ["auditors"]}}},
    )
    done = corp.sign_in(name_id="alice", attributes=ENTRA_ATTRIBUTES)
    assert_refused(corp, done, aws, "access_denied")


# --------------------------------------------------------------------------- single logout


def slo_corp(start_corp: Callable[..., Corp], **entry: Any) -> Corp:
    keys = sp_keys()
    return start_corp(sp_key=keys.key_pem, sp_cert=keys.cert_pem, **entry)


def signed_in(corp: Corp, name_id: str = "alice-0001") -> str:
    """Sign ``name_id`` in; the SessionIndex pysaml2 gave that sign-in."""
    posted = corp.idp.answer(corp.begin(), name_id=name_id, attributes=SHIBBOLETH_ATTRIBUTES)
    done = corp.post(posted)
    assert done.status_code == 302 and "error" not in done.headers["Location"], done.text
    root = etree.fromstring(base64.b64decode(posted.fields["SAMLResponse"]))
    [index] = root.xpath("//saml:AuthnStatement/@SessionIndex", namespaces=NS)
    return str(index)


def slo_url(corp: Corp) -> str:
    return f"{corp.broker.url}/v1/saml/corp/slo"


def sp_entity_id(corp: Corp) -> str:
    return f"{corp.broker.url}/v1/saml/corp/metadata"


def send_logout(corp: Corp, message: Posted | str) -> requests.Response:
    """The IdP's LogoutRequest, through the browser: a redirect followed, or a form posted."""
    other_browser = LoopbackSession()
    if isinstance(message, Posted):
        return other_browser.post(message.url, data=message.fields, allow_redirects=False)
    return other_browser.get(message, allow_redirects=False, timeout=10)


@pytest.mark.parametrize("binding", ["redirect", "post"])
def test_an_idp_initiated_logout_ends_the_session_and_is_answered_signed(
    binding: str, start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp, aws: Any
) -> None:
    corp = slo_corp(start_corp)
    signed_in(corp)
    assert corp.api("POST", "/v1/credentials").status_code == 200
    request_id, message = pysaml2_idp.logout_request(
        slo_url(corp), sp_entity_id(corp), name_id="alice-0001", binding=binding, relay_state="r1"
    )
    answered = send_logout(corp, message)
    assert answered.status_code == 303, answered.text
    location = answered.headers["Location"]
    assert location.startswith(pysaml2_idp.slo_url + "?")
    assert parse_qs(urlsplit(location).query)["RelayState"] == ["r1"]
    response = pysaml2_idp.read_logout(location, binding="redirect", response=True)
    assert response.response.in_response_to == request_id
    assert response.response.status.status_code.value == STATUS_SUCCESS
    assert corp.api("POST", "/v1/credentials").status_code == 401
    assert corp.api("GET", "/v1/session").status_code == 401


def test_a_logout_naming_a_session_index_ends_only_that_session(
    start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = slo_corp(start_corp)
    first_index = signed_in(corp)
    first_session = dict(corp.http.cookies)
    corp.http.cookies.clear()
    signed_in(corp)
    _, message = pysaml2_idp.logout_request(
        slo_url(corp), sp_entity_id(corp), name_id="alice-0001", session_index=first_index
    )
    assert send_logout(corp, message).status_code == 303
    assert corp.api("GET", "/v1/session").status_code == 200  # the second sign-in lives
    corp.http.cookies.clear()
    corp.http.cookies.update(first_session)
    assert corp.api("GET", "/v1/session").status_code == 401


LOGOUT_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "unsigned, redirect": ({"sign": False}, "the logout request is not signed"),
    "unsigned, post": ({"sign": False, "binding": "post"}, "the logout request is not signed"),
    "signed with SHA-1, redirect": ({"hash_alg": "sha1"}, SHA1_REFUSAL),
    "signed with SHA-1, post": ({"hash_alg": "sha1", "binding": "post"}, SHA1_REFUSAL),
    "for another destination": ({"destination": "elsewhere"}, "wrong destination"),
}


@pytest.mark.parametrize(("fields", "reason"), LOGOUT_REFUSALS.values(), ids=LOGOUT_REFUSALS.keys())
def test_a_logout_request_that_does_not_verify_ends_nothing(
    fields: dict[str, Any], reason: str, start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = slo_corp(start_corp)
    signed_in(corp)
    destination = slo_url(corp)
    if fields.pop("destination", None):
        destination = f"{corp.broker.url}/v1/saml/other/slo"
    _, message = pysaml2_idp.logout_request(
        destination, sp_entity_id(corp), name_id="alice-0001", **fields
    )
    if isinstance(message, Posted):
        message = Posted(slo_url(corp), message.fields)
    else:
        message = slo_url(corp) + "?" + urlsplit(message).query
    refused = send_logout(corp, message)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "invalid_token"
    assert refused.json()["detail"] == reason
    assert corp.api("GET", "/v1/session").status_code == 200


def _naming_bob(message: Posted | str) -> Posted | str:
    """``message`` with its NameID changed to bob and its signature kept."""
    if isinstance(message, Posted):
        xml = base64.b64decode(message.fields["SAMLRequest"]).replace(b">alice-0001<", b">bob<")
        return Posted(
            message.url, {**message.fields, "SAMLRequest": base64.b64encode(xml).decode()}
        )
    parts = urlsplit(message)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    inflated = zlib.decompress(base64.b64decode(query["SAMLRequest"]), -15)
    deflater = zlib.compressobj(wbits=-15)
    xml = inflated.replace(b">alice-0001<", b">bob<")
    query["SAMLRequest"] = base64.b64encode(deflater.compress(xml) + deflater.flush()).decode()
    return parts._replace(query=urlencode(query)).geturl()


@pytest.mark.parametrize("binding", ["redirect", "post"])
def test_a_logout_request_altered_after_signing_ends_nothing(
    binding: str, start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = slo_corp(start_corp)
    signed_in(corp, name_id="bob")
    _, message = pysaml2_idp.logout_request(
        slo_url(corp), sp_entity_id(corp), name_id="alice-0001", binding=binding
    )
    refused = send_logout(corp, _naming_bob(message))
    assert refused.status_code == 401, refused.text
    assert refused.json()["detail"] == "signature not accepted"
    assert corp.api("GET", "/v1/session").status_code == 200


def test_a_replayed_logout_request_is_refused(
    start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = slo_corp(start_corp)
    signed_in(corp)
    _, message = pysaml2_idp.logout_request(slo_url(corp), sp_entity_id(corp), name_id="alice-0001")
    assert send_logout(corp, message).status_code == 303
    signed_in(corp)
    again = send_logout(corp, message)
    assert again.status_code == 401
    assert again.json()["detail"] == "logout request already used"
    assert corp.api("GET", "/v1/session").status_code == 200


def test_logging_out_at_the_broker_hands_back_a_signed_logout_request_for_the_idp(
    start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = slo_corp(start_corp)
    index = signed_in(corp)
    logout = corp.api("POST", "/v1/logout")
    assert logout.status_code == 200, logout.text
    url = logout.json()["end_session_url"]
    assert url.startswith(pysaml2_idp.slo_url + "?")
    request = pysaml2_idp.read_logout(url, binding="redirect", response=False)
    assert request.message.name_id.text == "alice-0001"
    assert [i.text for i in request.message.session_index] == [index]
    assert request.message.issuer.text == sp_entity_id(corp)
    assert corp.api("GET", "/v1/session").status_code == 401
    assert corp.api("POST", "/v1/credentials").status_code == 401
    # The IdP signs the person out and answers at the broker's SLO URL: back to the app.
    back = send_logout(corp, pysaml2_idp.logout_response(request, slo_url(corp)))
    assert back.status_code == 303
    assert back.headers["Location"] == SPA_HOME


def test_without_an_sp_key_logout_has_no_end_session_url(
    start_corp: Callable[..., Corp], pysaml2_idp: Pysaml2Idp
) -> None:
    corp = start_corp()
    signed_in(corp)
    logout = corp.api("POST", "/v1/logout")
    assert logout.status_code == 200
    assert logout.json() == {"end_session_url": None}


def test_the_sp_metadata_lists_the_slo_endpoint_for_both_bindings(
    start_corp: Callable[..., Corp],
) -> None:
    corp = slo_corp(start_corp)
    xml = requests.get(f"{corp.broker.url}/v1/saml/corp/metadata", timeout=10).text
    root = etree.fromstring(xml.encode("utf-8"))
    services = root.xpath("//md:SingleLogoutService", namespaces=NS)
    assert sorted((s.get("Binding"), s.get("Location")) for s in services) == [
        (BINDING_HTTP_POST, slo_url(corp)),
        (BINDING_HTTP_REDIRECT, slo_url(corp)),
    ]
