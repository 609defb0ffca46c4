"""SAML 2.0 sign-in over HTTP: a live broker (Werkzeug thread), the test IdP on loopback
(metadata, and an SSO page that signs with xmlsec), the moto server for vending, and a
``requests`` cookie jar standing in for the browser (it keeps ``Secure`` cookies over
loopback http, as Chromium does).

Every attack goes through a real login transaction: ``GET /v1/login/corp`` with the
pre-login cookie, the RelayState and AuthnRequest ID read from the redirect, the attack
built for that request and posted to the ACS. Each refusal checks what the browser sees,
that no session cookie was set and no session exists, and that nothing reached AWS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from identity.config.document import BrokerConfig
from tests.fixtures import saml_idp as idp_kit
from tests.fixtures.apps import broker_config
from tests.fixtures.configs import provider_dict
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.recorder import sts_tags
from tests.fixtures.saml_idp import (
    AuthnRequestSeen,
    MetadataFault,
    SamlAttribute,
    SamlIdp,
    SsoUser,
    encode,
    read_auto_post,
    rogue_keys,
)

SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
NATIVE = "com.example.chat:/oauth"
COOKIE = "chime_broker_session"
PRE_LOGIN_COOKIE = f"__Host-{COOKIE}_login"
ALICE = "alice-0001"
ALICE_ATTRIBUTES = (
    SamlAttribute("urn:oid:2.16.840.1.113730.3.1.241", ("Alice Example",), "displayName"),
    SamlAttribute("department", ("Research",)),
)


def saml_config(
    url: str, aws: Any, idp: SamlIdp, *, page: str = SPA_HOME, **entry: Any
) -> BrokerConfig:
    """The broker at ``url`` with one SAML provider, ``corp`` ("Corp SSO"), whose IdP is
    ``idp``: user ids ``corp-{name_id}``, the display name and a ``department`` tag from
    attributes. The SPA at ``page`` may use it; native apps may return to ``NATIVE``."""
    return broker_config(
        aws,
        service__public_url=url,
        service__allowed_origins=["{0.scheme}://{0.netloc}".format(urlsplit(page))],
        service__allowed_return_to=[page, NATIVE],
        service__default_return_to=page,
        providers=[
            provider_dict(
                "saml",
                display_name="Corp SSO",
                idp_metadata_url=idp.metadata_url,
                sp_entity_id=f"{url}/v1/saml/corp/metadata",
                map={
                    "user_id": "corp-{name_id}",
                    "display_name": "{displayName}",
                    "tags": {"department": "{department}"},
                },
                **entry,
            )
        ],
    )


@dataclass(frozen=True)
class Login:
    """A login the broker began: what its redirect told the IdP."""

    request: AuthnRequestSeen

    @property
    def relay_state(self) -> str:
        assert self.request.relay_state is not None
        return self.request.relay_state

    @property
    def request_id(self) -> str:
        return self.request.id


class Browser:
    """A cookie jar that follows no redirect by itself, so each hop can be inspected."""

    def __init__(self, broker: LiveServer, idp: SamlIdp) -> None:
        self.broker = broker
        self.idp = idp
        self.http = LoopbackSession()
        self.acs_url = f"{broker.url}/v1/saml/corp/acs"

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.http.get(url, allow_redirects=False, timeout=10, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.http.post(url, allow_redirects=False, timeout=30, **kwargs)

    def begin(self, **params: str) -> Login:
        """``GET /v1/login/corp``: the AuthnRequest the browser carries to the IdP."""
        response = self.get(f"{self.broker.url}/v1/login/corp", params=params)
        assert response.status_code == 302, response.text
        return Login(self.idp.read_authn_request(response.headers["Location"]))

    def post_acs(self, saml_response: str, relay_state: str | None) -> requests.Response:
        """What the IdP's auto-posting page makes the browser send to the ACS."""
        form = {"SAMLResponse": saml_response}
        if relay_state is not None:
            form["RelayState"] = relay_state
        return self.post(self.acs_url, data=form)

    def sign_in_at_idp(self, login_url: str) -> requests.Response:
        """Follow the login through the IdP's SSO page and its auto-posted form."""
        response = self.get(login_url)
        assert response.status_code == 302, response.text
        page = self.get(response.headers["Location"])
        assert page.status_code == 200, page.text
        action, fields = read_auto_post(page.text)
        assert action == self.acs_url
        return self.post(action, data=fields)

    def api(self, method: str, path: str) -> requests.Response:
        return self.http.request(
            method,
            f"{self.broker.url}{path}",
            headers={"Origin": SPA},
            allow_redirects=False,
            timeout=10,
        )

    def session_status(self) -> int:
        return self.api("GET", "/v1/session").status_code


def answer(browser: Browser, login: Login, **fields: Any) -> str:
    """The IdP's signed Response (XML) to ``login`` for Alice, good unless ``fields`` say
    otherwise."""
    values: dict[str, Any] = {
        "in_response_to": login.request_id,
        "destination": login.request.acs_url,
        "audience": login.request.issuer,
        "recipient": login.request.acs_url,
        "name_id": ALICE,
        "attributes": ALICE_ATTRIBUTES,
    }
    values.update(fields)
    return browser.idp.build_response(**values)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def set_cookies(response: requests.Response) -> dict[str, str]:
    """Every ``Set-Cookie`` of ``response``, by cookie name, as sent."""
    return {
        header.split("=", 1)[0]: header for header in response.raw.headers.getlist("Set-Cookie")
    }


def cookie_flags(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def assert_problem(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def assert_nothing_granted(browser: Browser, response: requests.Response, aws: Any) -> None:
    """No session cookie, no credentials in the answer, no AWS call, no session."""
    assert COOKIE not in set_cookies(response)
    assert "access_key_id" not in response.text and "cbn_" not in response.text
    assert browser.http.cookies.get(COOKIE) is None
    assert aws.recorder.requests() == []
    assert browser.session_status() == 401


def assert_error_redirect(response: requests.Response, code: str, to: str = SPA_HOME) -> None:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.split("?")[0] == to
    assert query(location) == {"error": code}


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture
def broker(live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp) -> LiveServer:
    return live_broker(lambda url: saml_config(url, aws, saml_idp))


@pytest.fixture
def browser(broker: LiveServer, saml_idp: SamlIdp) -> Browser:
    return Browser(broker, saml_idp)


# -- the journey ---------------------------------------------------------------------------


def test_a_saml_login_opens_a_session_that_vends_for_the_asserted_user(
    broker: LiveServer, browser: Browser, saml_idp: SamlIdp, aws: Any
) -> None:
    listed = requests.get(f"{broker.url}/v1/providers", timeout=10).json()
    assert listed == [
        {
            "name": "corp",
            "kind": "saml",
            "display_name": "Corp SSO",
            "login_url": f"{broker.url}/v1/login/corp",
        }
    ]

    return_to = f"{SPA_HOME}chat?room=1"
    response = browser.get(listed[0]["login_url"], params={"return_to": return_to})
    assert response.status_code == 302
    login = Login(saml_idp.read_authn_request(response.headers["Location"]))
    assert login.request.acs_url == browser.acs_url
    assert login.request.issuer == f"{broker.url}/v1/saml/corp/metadata"
    # RelayState is an opaque transaction id: neither return_to nor the request id.
    assert len(login.relay_state) == 43 and return_to not in login.relay_state
    assert login.request_id not in login.relay_state
    [pre_login] = [v for k, v in set_cookies(response).items() if k.startswith(PRE_LOGIN_COOKIE)]
    assert {"secure", "httponly", "samesite=none", "path=/"} <= cookie_flags(pre_login)

    done = browser.post_acs(encode(answer(browser, login)), login.relay_state)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == return_to
    session = set_cookies(done)[COOKIE]
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= cookie_flags(session)
    # A browser session vends only when the SPA asks for credentials.
    assert aws.recorder.requests() == []

    me = browser.api("GET", "/v1/session").json()
    arn = f"{aws.app_instance_arn}/user/corp-{ALICE}"
    assert (me["provider"], me["user_id"], me["display_name"]) == (
        "corp",
        f"corp-{ALICE}",
        "Alice Example",
    )
    assert me["app_instance_user_arn"] == arn

    issued = browser.api("POST", "/v1/credentials")
    assert issued.status_code == 200, issued.text
    assert issued.json()["app_instance_user_arn"] == arn
    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleArn"] == aws.user_role_arn
    assert call["SourceIdentity"] == f"corp-{ALICE}"
    assert sts_tags(call) == {aws.user_tag: f"corp-{ALICE}", "department": "Research"}


def test_the_idp_sso_page_posts_a_signed_answer_that_finishes_the_login(
    broker: LiveServer, browser: Browser, saml_idp: SamlIdp
) -> None:
    saml_idp.sso_user = SsoUser("bob-0002", ALICE_ATTRIBUTES)
    done = browser.sign_in_at_idp(f"{broker.url}/v1/login/corp?return_to={SPA_HOME}")
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == SPA_HOME
    assert browser.api("GET", "/v1/session").json()["user_id"] == "corp-bob-0002"


def test_a_refusal_by_the_idp_goes_back_as_access_denied(
    broker: LiveServer, browser: Browser, saml_idp: SamlIdp, aws: Any
) -> None:
    saml_idp.sso_user = None
    refused = browser.sign_in_at_idp(f"{broker.url}/v1/login/corp?return_to={SPA_HOME}")
    assert_error_redirect(refused, "access_denied")
    assert_nothing_granted(browser, refused, aws)


def test_a_native_app_finishes_a_saml_login_with_the_one_time_code(
    broker: LiveServer, browser: Browser, aws: Any
) -> None:
    verifier = secrets.token_urlsafe(48)
    login = browser.begin(
        return_to=f"{NATIVE}/done", code_challenge=s256(verifier), code_challenge_method="S256"
    )
    done = browser.post_acs(encode(answer(browser, login)), login.relay_state)
    assert done.status_code == 302, done.text
    location = done.headers["Location"]
    assert location.startswith(f"{NATIVE}/done?code=cbn_")
    assert COOKIE not in set_cookies(done)
    assert aws.recorder.requests() == []

    code = query(location)["code"]
    exchange = {"provider": "corp", "code": code, "code_verifier": verifier}
    redeemed = requests.post(f"{broker.url}/v1/token", json=exchange, timeout=10)
    assert redeemed.status_code == 200, redeemed.text
    body = redeemed.json()
    assert body["app_instance_user_arn"] == f"{aws.app_instance_arn}/user/corp-{ALICE}"
    assert body["credentials"]["access_key_id"]
    token = body["broker_session"]["token"]
    [call] = aws.recorder.calls("AssumeRole")
    assert sts_tags(call) == {aws.user_tag: f"corp-{ALICE}", "department": "Research"}

    aws.recorder.reset()
    again = requests.post(f"{broker.url}/v1/token", json=exchange, timeout=10)
    assert_problem(again, 400, "invalid_request")
    assert aws.recorder.requests() == []
    who = requests.get(
        f"{broker.url}/v1/session", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert who.json()["user_id"] == f"corp-{ALICE}"


# -- attacks, each through a real login transaction ---------------------------------------


def _wrapped(wrap: Callable[[str], str]) -> Callable[[Browser, Login], str]:
    def attack(browser: Browser, login: Login) -> str:
        genuine = answer(browser, login, assertion_id="_genuine")
        forged = wrap(genuine)
        # The genuine signature stays intact; the forgery names someone else.
        assert idp_kit.verify_signature(forged, "_genuine", browser.idp.signing.cert_pem)
        assert ">admin<" in forged
        return encode(forged)

    return attack


def _response_signed_then(wrap: Callable[[str], str]) -> Callable[[Browser, Login], str]:
    def attack(browser: Browser, login: Login) -> str:
        genuine = answer(browser, login, sign_assertion=False, sign_response=True)
        forged = wrap(genuine)
        assert ">admin<" in forged
        return encode(forged)

    return attack


def _signed(**fields: Any) -> Callable[[Browser, Login], str]:
    return lambda browser, login: encode(answer(browser, login, **fields))


def _with_doctype(subset: str) -> Callable[[Browser, Login], str]:
    return lambda browser, login: encode(idp_kit.with_doctype(answer(browser, login), subset))


def _minutes(**offsets: float) -> Callable[[Browser, Login], str]:
    def attack(browser: Browser, login: Login) -> str:
        now = dt.datetime.now(dt.UTC)
        times = {field: now + dt.timedelta(minutes=offset) for field, offset in offsets.items()}
        return encode(answer(browser, login, **times))

    return attack


ROGUE = rogue_keys()

ATTACKS: dict[str, Callable[[Browser, Login], str]] = {
    "forged assertion before the signed one": _wrapped(idp_kit.xsw_forged_before),
    "forged assertion after the signed one": _wrapped(idp_kit.xsw_forged_after),
    "signed assertion wrapped inside the forged one": _wrapped(idp_kit.xsw_wrapped),
    "signed assertion inside the forged one's Signature": _wrapped(idp_kit.xsw_in_signature_object),
    "signed assertion hidden in Extensions": _wrapped(idp_kit.xsw_in_extensions),
    "a second, unsigned assertion": _wrapped(idp_kit.with_second_assertion),
    "unsigned assertion": _signed(sign_assertion=False),
    "signed response, forged assertion added": _response_signed_then(idp_kit.xsw_forged_before),
    "signed by another certificate": _signed(key=ROGUE.key_pem, cert=ROGUE.cert_pem),
    "RSA-SHA1 signature": _signed(signature_alg="rsa-sha1"),
    "SHA-1 digest": _signed(digest="sha1"),
    "external entity (XXE)": _with_doctype(idp_kit.XXE_FILE),
    "external parameter entity": _with_doctype(idp_kit.XXE_PARAMETER),
    "entity expansion (billion laughs)": _with_doctype(idp_kit.BILLION_LAUGHS),
    "Destination of another SP": _signed(destination="https://other.example/acs"),
    "Recipient of another SP": _signed(recipient="https://other.example/acs"),
    "Audience of another SP": _signed(audience="https://other.example/sp"),
    "another Issuer": _signed(issuer="https://evil.example/idp"),
    "NotOnOrAfter ten minutes ago": _minutes(not_on_or_after=-10),
    "NotBefore in ten minutes": _minutes(not_before=10),
    "InResponseTo of another request": _signed(in_response_to="_another-request"),
    "an assertion confirmed for another request": _signed(subject_in_response_to="_another"),
    "unsolicited response": _signed(in_response_to=None),
    "bad base64": lambda browser, login: "not base64 at all!",
    "not XML": lambda browser, login: base64.b64encode(b"hello").decode(),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_an_attack_posted_to_the_acs_grants_nothing(
    attack: Callable[[Browser, Login], str], broker: LiveServer, browser: Browser, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    refused = browser.post_acs(attack(browser, login), login.relay_state)
    assert_error_redirect(refused, "invalid_token")
    assert_nothing_granted(browser, refused, aws)
    # The refused answer spent the transaction: a genuine one cannot follow it.
    late = browser.post_acs(encode(answer(browser, login)), login.relay_state)
    assert_problem(late, 401, "invalid_token")
    assert_nothing_granted(browser, late, aws)


def test_a_comment_in_the_name_id_never_truncates_it(
    broker: LiveServer, browser: Browser, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    signed = answer(browser, login, name_id="admin.evil@example.com", assertion_id="_a1")
    attack = idp_kit.with_comment_in_name_id(signed, split_at=5)
    assert "admin<!---->.evil@example.com" in attack
    done = browser.post_acs(encode(attack), login.relay_state)
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME
    assert browser.api("GET", "/v1/session").json()["user_id"] == "corp-admin.evil@example.com"
    assert browser.api("POST", "/v1/credentials").status_code == 200
    [call] = aws.recorder.calls("AssumeRole")
    assert sts_tags(call)[aws.user_tag] == "corp-admin.evil@example.com"


def test_a_replayed_assertion_grants_nothing(
    broker: LiveServer, browser: Browser, saml_idp: SamlIdp, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    captured = encode(answer(browser, login, assertion_id="_once"))
    assert set_cookies(browser.post_acs(captured, login.relay_state))[COOKIE]

    attacker = Browser(broker, saml_idp)
    # The captured form as it was posted: its transaction is spent.
    as_posted = attacker.post_acs(captured, login.relay_state)
    assert_problem(as_posted, 401, "invalid_token")
    assert_nothing_granted(attacker, as_posted, aws)
    # The captured response under a login of the attacker's own.
    own = attacker.begin(return_to=SPA_HOME)
    replayed = attacker.post_acs(captured, own.relay_state)
    assert_error_redirect(replayed, "invalid_token")
    assert_nothing_granted(attacker, replayed, aws)
    # The same assertion id, even signed again for the attacker's request.
    own = attacker.begin(return_to=SPA_HOME)
    resigned = attacker.post_acs(
        encode(answer(attacker, own, assertion_id="_once")), own.relay_state
    )
    assert_error_redirect(resigned, "invalid_token")
    assert_nothing_granted(attacker, resigned, aws)


def test_a_two_megabyte_body_is_refused_before_it_is_read(
    broker: LiveServer, browser: Browser, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    padding = (SamlAttribute("padding", ("x" * (2 * 1024 * 1024),)),)
    body = encode(answer(browser, login, attributes=padding))
    assert len(body) > 2_000_000
    refused = browser.post_acs(body, login.relay_state)
    assert_problem(refused, 413, "payload_too_large")
    assert_nothing_granted(browser, refused, aws)


def test_the_acs_takes_more_than_the_usual_body_cap(broker: LiveServer, browser: Browser) -> None:
    login = browser.begin(return_to=SPA_HOME)
    # Over service.max_body (64 KiB), under the ACS's 1 MiB.
    groups = (SamlAttribute("groups", tuple(f"group-{i:05d}" for i in range(4000))),)
    body = encode(answer(browser, login, attributes=ALICE_ATTRIBUTES + groups))
    assert 64 * 1024 < len(body) < 1024 * 1024
    done = browser.post_acs(body, login.relay_state)
    assert done.status_code == 302 and COOKIE in set_cookies(done)


def test_another_browsers_relay_state_is_refused_and_its_own_browser_still_finishes(
    broker: LiveServer, browser: Browser, saml_idp: SamlIdp, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    response = encode(answer(browser, login))

    stranger = Browser(broker, saml_idp)
    stranger.begin()  # the stranger has a pre-login cookie of its own
    refused = stranger.post_acs(response, login.relay_state)
    assert_problem(refused, 400, "invalid_request")
    assert_nothing_granted(stranger, refused, aws)
    cookieless = Browser(broker, saml_idp)
    refused = cookieless.post_acs(response, login.relay_state)
    assert_problem(refused, 400, "invalid_request")
    assert_nothing_granted(cookieless, refused, aws)

    done = browser.post_acs(response, login.relay_state)
    assert done.status_code == 302 and COOKIE in set_cookies(done)


def test_the_oidc_callback_does_not_take_a_saml_transaction(
    broker: LiveServer, browser: Browser
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    refused = browser.get(
        f"{broker.url}/v1/callback/corp", params={"state": login.relay_state, "code": "x"}
    )
    assert_problem(refused, 400, "invalid_request")
    done = browser.post_acs(encode(answer(browser, login)), login.relay_state)
    assert done.status_code == 302 and COOKIE in set_cookies(done)


def test_the_acs_takes_a_form_with_each_field_once(
    broker: LiveServer, browser: Browser, aws: Any
) -> None:
    login = browser.begin(return_to=SPA_HOME)
    saml_response = encode(answer(browser, login))
    as_json = browser.post(
        browser.acs_url, json={"SAMLResponse": saml_response, "RelayState": login.relay_state}
    )
    assert_problem(as_json, 415, "unsupported_media_type")
    twice = browser.post(
        browser.acs_url,
        data=[
            ("SAMLResponse", saml_response),
            ("SAMLResponse", saml_response),
            ("RelayState", login.relay_state),
        ],
    )
    assert_problem(twice, 400, "invalid_request")
    assert_nothing_granted(browser, twice, aws)

    missing = browser.post(browser.acs_url, data={"RelayState": login.relay_state})
    assert_error_redirect(missing, "invalid_request")
    assert_nothing_granted(browser, missing, aws)


def test_a_login_while_the_idp_metadata_is_unavailable_goes_back_with_an_error(
    live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp
) -> None:
    saml_idp.fault = MetadataFault(status=503)
    server = live_broker(lambda url: saml_config(url, aws, saml_idp))
    response = requests.get(
        f"{server.url}/v1/login/corp",
        params={"return_to": SPA_HOME},
        allow_redirects=False,
        timeout=10,
    )
    assert_error_redirect(response, "upstream_unavailable")
    assert not any(name.startswith(PRE_LOGIN_COOKIE) for name in set_cookies(response))
    ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["checks"]["saml"] == {"corp": "metadata unavailable"}


def test_readiness_reports_loaded_saml_metadata(broker: LiveServer) -> None:
    ready = requests.get(f"{broker.url}/readyz", timeout=10).json()
    assert ready["checks"] == {"config": "ok", "store": "ok", "saml": {"corp": "ok"}}


# -- IdP-initiated sign-in -----------------------------------------------------------------


def unsolicited(browser: Browser, **fields: Any) -> str:
    """A signed Response nobody asked for, addressed to the broker's ACS."""
    values: dict[str, Any] = {
        "in_response_to": None,
        "destination": browser.acs_url,
        "audience": f"{browser.broker.url}/v1/saml/corp/metadata",
        "recipient": browser.acs_url,
        "name_id": ALICE,
        "attributes": ALICE_ATTRIBUTES,
    }
    values.update(fields)
    return encode(browser.idp.build_response(**values))


@pytest.mark.parametrize("relay_state", [None, SPA_HOME, "", "x" * 43])
def test_idp_initiated_sign_in_is_refused_by_default(
    relay_state: str | None, broker: LiveServer, browser: Browser, aws: Any
) -> None:
    refused = browser.post_acs(unsolicited(browser), relay_state)
    assert_problem(refused, 401, "invalid_token")
    assert_nothing_granted(browser, refused, aws)


@pytest.fixture
def idp_initiated(live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp) -> Browser:
    """A browser at a broker whose ``corp`` provider allows IdP-initiated sign-in."""
    server = live_broker(lambda url: saml_config(url, aws, saml_idp, allow_idp_initiated=True))
    return Browser(server, saml_idp)


@pytest.mark.parametrize(
    ("relay_state", "lands_on"),
    [
        (f"{SPA_HOME}rooms?id=7", f"{SPA_HOME}rooms?id=7"),
        (None, SPA_HOME),
        ("https://evil.example/app/", SPA_HOME),
        ("//evil.example/app/", SPA_HOME),
        (f"{NATIVE}/done", f"{NATIVE}/done"),
    ],
)
def test_allowed_idp_initiated_sign_in_returns_only_to_an_allowed_url(
    relay_state: str | None, lands_on: str, idp_initiated: Browser
) -> None:
    done = idp_initiated.post_acs(unsolicited(idp_initiated), relay_state)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == lands_on
    assert COOKIE in set_cookies(done)
    assert idp_initiated.api("GET", "/v1/session").json()["user_id"] == f"corp-{ALICE}"


def test_allowed_idp_initiated_sign_in_still_verifies_everything(
    idp_initiated: Browser, saml_idp: SamlIdp, aws: Any
) -> None:
    for saml_response in (
        unsolicited(idp_initiated, key=ROGUE.key_pem, cert=ROGUE.cert_pem),
        unsolicited(idp_initiated, in_response_to="_some-request"),
        unsolicited(idp_initiated, audience="https://other.example/sp"),
    ):
        refused = idp_initiated.post_acs(saml_response, SPA_HOME)
        assert_problem(refused, 401, "invalid_token")
        assert_nothing_granted(idp_initiated, refused, aws)

    # A RelayState naming a live transaction is that transaction's, not a URL.
    owner = Browser(idp_initiated.broker, saml_idp)
    login = owner.begin(return_to=SPA_HOME)
    refused = idp_initiated.post_acs(unsolicited(idp_initiated), login.relay_state)
    assert_problem(refused, 400, "invalid_request")
    assert_nothing_granted(idp_initiated, refused, aws)

    replay = unsolicited(idp_initiated, assertion_id="_idp-once")
    assert idp_initiated.post_acs(replay, SPA_HOME).status_code == 302
    again = Browser(idp_initiated.broker, saml_idp)
    refused = again.post_acs(replay, SPA_HOME)
    assert_problem(refused, 401, "invalid_token")
    assert_nothing_granted(again, refused, aws)


# -- SP metadata ---------------------------------------------------------------------------


def test_sp_metadata_is_valid_and_built_from_the_public_url(
    live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp
) -> None:
    public_url = "https://auth.example.chat/broker"
    server = live_broker(saml_config(public_url, aws, saml_idp))
    response = requests.get(
        f"{server.url}/v1/saml/corp/metadata",
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/samlmetadata+xml")
    xml = response.text
    assert "evil.example" not in xml and "127.0.0.1" not in xml

    checker = OneLogin_Saml2_Settings(
        {"sp": {"entityId": "urn:x", "assertionConsumerService": {"url": "https://x.example/"}}},
        sp_validation_only=True,
    )
    assert checker.validate_metadata(xml) == []
    root = etree.fromstring(xml.encode("utf-8"))
    ns = {"md": idp_kit.NS_MD}
    assert root.get("entityID") == f"{public_url}/v1/saml/corp/metadata"
    descriptor = root.find("md:SPSSODescriptor", ns)
    assert descriptor is not None
    assert descriptor.get("WantAssertionsSigned") == "true"
    acs = descriptor.find("md:AssertionConsumerService", ns)
    assert acs is not None
    assert acs.get("Location") == f"{public_url}/v1/saml/corp/acs"
    assert acs.get("Binding") == OneLogin_Saml2_Constants.BINDING_HTTP_POST

    unknown = requests.get(f"{server.url}/v1/saml/nobody/metadata", timeout=10)
    assert_problem(unknown, 404, "unknown_provider")
    unknown_acs = requests.post(
        f"{server.url}/v1/saml/nobody/acs", data={"SAMLResponse": "x"}, timeout=10
    )
    assert_problem(unknown_acs, 404, "unknown_provider")
