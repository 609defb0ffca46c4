"""A SAML sign-in in headless Chromium: the demo page (served as an SPA on its own origin)
sends the person to the broker, the broker sends an AuthnRequest to the test IdP, whose
sign-in page signs a real assertion with xmlsec and posts it to the ACS by itself; the
page then shows the mapped user, ARN and credentials. The IdP is named ``localhost`` and
the broker ``127.0.0.1``, so that post is cross-site, as it is in production. The same
login finished by a native app, through the one-time code."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from playwright.sync_api import Page

from identity.config.document import BrokerConfig
from tests.e2e.pages import DemoPage, SpaServer
from tests.fixtures.live_server import LiveServer
from tests.fixtures.recorder import sts_tags
from tests.fixtures.saml_idp import SamlAttribute, SamlIdp, SsoUser
from tests.integration.test_saml_login import NATIVE, saml_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COOKIE = "chime_broker_session"
PRE_LOGIN_COOKIE = f"__Host-{COOKIE}_login"
ADA = SsoUser(
    "ada-0001",
    (
        SamlAttribute("urn:oid:2.16.840.1.113730.3.1.241", ("Ada Lovelace",), "displayName"),
        SamlAttribute("department", ("Analytical Engines",)),
    ),
)
ADA_USER_ID = "corp-ada-0001"


def broker_config(url: str, *, aws: Any, idp: SamlIdp, page_url: str) -> BrokerConfig:
    """A production broker at ``url`` whose one provider, ``corp`` ("Corp SSO"), is the
    SAML ``idp``; the page at ``page_url`` may use it."""
    return saml_config(url, aws, idp, page=page_url)


@dataclass(frozen=True)
class World:
    broker: LiveServer
    idp: SamlIdp
    spa: SpaServer

    @property
    def acs_url(self) -> str:
        return f"{self.broker.url}/v1/saml/corp/acs"


@pytest.fixture
def saml_world(
    live_broker: Callable[..., LiveServer], aws: Any, spa_server: Callable[[], SpaServer]
) -> Iterator[World]:
    idp = SamlIdp(host="localhost")
    try:
        idp.sso_user = ADA
        spa = spa_server()
        broker = live_broker(lambda url: broker_config(url, aws=aws, idp=idp, page_url=spa.url))
        spa.broker_url = broker.url
        yield World(broker=broker, idp=idp, spa=spa)
    finally:
        idp.stop()


def cookie(page: Page, url: str, name: str) -> dict[str, Any] | None:
    found = [c for c in page.context.cookies(url) if c["name"] == name]
    return dict(found[0]) if found else None


def assert_vended_for_ada(aws: Any, calls: list[dict[str, Any]]) -> None:
    assert calls
    for call in calls:
        assert call["RoleArn"] == aws.user_role_arn
        assert call["RoleSessionName"] == call["SourceIdentity"] == ADA_USER_ID
        assert sts_tags(call) == {aws.user_tag: ADA_USER_ID, "department": "Analytical Engines"}


def test_a_person_signs_in_through_the_saml_idp_and_sees_their_chime_user(
    saml_world: World, demo_page: DemoPage, aws: Any
) -> None:
    world = saml_world
    demo_page.open(world.spa.url)
    assert demo_page.provider_buttons() == ["Corp SSO"]

    with demo_page.tab.expect_request(lambda r: r.url == world.acs_url) as posted:
        demo_page.tab.locator('#providers button[data-provider="corp"]').click()
    acs = posted.value
    assert acs.method == "POST"
    # The IdP's page posted from another site: only a SameSite=None cookie comes along.
    assert acs.all_headers()["sec-fetch-site"] == "cross-site"
    assert f"{PRE_LOGIN_COOKIE}_" in acs.all_headers().get("cookie", "")
    form = parse_qs(acs.post_data or "")
    [seen] = world.idp.sso_requests
    assert form["RelayState"] == [seen.relay_state]
    assert seen.acs_url == world.acs_url

    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.tab.url == world.spa.url
    assert any(url.startswith(world.idp.sso_url + "?") for url in demo_page.navigations)
    arn = f"{aws.app_instance_arn}/user/{ADA_USER_ID}"
    assert demo_page.text("user-id") == ADA_USER_ID
    assert demo_page.text("provider") == "Corp SSO"
    assert demo_page.text("user-arn") == arn
    assert demo_page.text("region") == aws.region
    assert demo_page.text("access-key-id").startswith("ASIA")
    assert_vended_for_ada(aws, aws.recorder.calls("AssumeRole"))

    # The login's pre-login cookie went with its spent transaction.
    names = [c["name"] for c in demo_page.tab.context.cookies(world.broker.url)]
    assert not [name for name in names if name.startswith(PRE_LOGIN_COOKIE)]
    session = cookie(demo_page.tab, world.broker.url, COOKIE)
    assert session is not None
    assert (session["sameSite"], session["secure"], session["httpOnly"]) == ("Lax", True, True)

    demo_page.logout()
    assert demo_page.fetch_status(f"{world.broker.url}/v1/session") == 401
    assert demo_page.problems == []


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_a_native_app_finishes_the_same_saml_login_with_a_one_time_code(
    saml_world: World, page: Page, aws: Any
) -> None:
    world = saml_world
    verifier = secrets.token_urlsafe(48)
    login_url = f"{world.broker.url}/v1/login/corp?" + urlencode(
        {
            "return_to": f"{NATIVE}/done",
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        }
    )
    # The system browser: the IdP's page posts to the ACS, which hands the app its code.
    with page.expect_response(lambda r: r.url == world.acs_url) as answered:
        page.goto(login_url, wait_until="commit")
    acs = answered.value
    assert acs.status == 302
    location = acs.headers["location"]
    assert location.startswith(f"{NATIVE}/done?code=cbn_")
    assert cookie(page, world.broker.url, COOKIE) is None
    assert aws.recorder.requests() == []

    [code] = parse_qs(urlsplit(location).query)["code"]
    exchanged = requests.post(
        f"{world.broker.url}/v1/token",
        json={"provider": "corp", "code": code, "code_verifier": verifier},
        timeout=10,
    )
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["user_id"] == ADA_USER_ID
    assert body["display_name"] == "Ada Lovelace"
    assert body["app_instance_user_arn"] == f"{aws.app_instance_arn}/user/{ADA_USER_ID}"
    assert body["credentials"]["access_key_id"].startswith("ASIA")
    assert body["broker_session"]["token"]
    assert_vended_for_ada(aws, aws.recorder.calls("AssumeRole"))
