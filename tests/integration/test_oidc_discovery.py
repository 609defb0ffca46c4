"""One discovery document per ``oidc`` provider, over real HTTP: a live broker, two local
OIDC providers that count the requests they answer, the moto server for vending, and a
``requests`` cookie jar standing in for the browser.

The keys (mobile id tokens, the id token of a browser login) and the browser login's
endpoints (authorize, token, userinfo, end session) come from the same document, read
once per provider whichever path needs it first; a document naming another issuer is
refused on both paths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from identity.config.document import BrokerConfig
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.live_server import LiveServer
from tests.fixtures.oidc_provider import ALICE_SUB
from tests.integration.test_browser_login import Browser

CLIENT_ID = "broker-web"
CLIENT_SECRET = "broker-web-secret"
SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
COOKIE = "chime_broker_session"


# Per provider name: its IdP and the issuer the broker is configured with.
Idps = dict[str, tuple[DevIdentityProvider, str]]


def oidc_config(make_config: MakeConfig, url: str, idps: Idps) -> BrokerConfig:
    """The broker at ``url`` with one ``oidc`` provider per entry: its IdP and the issuer
    the broker is configured with."""
    for name, (idp, _) in idps.items():
        idp.register_client(
            CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{url}/v1/callback/{name}"]
        )
    return make_config(
        service__public_url=url,
        service__allowed_origins=[SPA],
        service__allowed_return_to=[SPA_HOME],
        service__default_return_to=SPA_HOME,
        providers=[
            {
                "name": name,
                "kind": "oidc",
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scopes": ["openid", "email", "profile"],
                "exchange": "sts",
                "map": {"user_id": f"{name}-{{sub}}", "display_name": "{name}"},
            }
            for name, (idp, issuer) in idps.items()
        ],
    )


@pytest.fixture
def broker_for(
    live_broker: Callable[..., LiveServer], make_config: MakeConfig, clock: FakeClock
) -> Callable[[Idps], LiveServer]:
    """``broker_for(idps)``: a live broker with one ``oidc`` provider per entry."""
    return lambda idps: live_broker(lambda url: oidc_config(make_config, url, idps), clock=clock)


def mobile_sign_in(
    broker: LiveServer, provider: str, idp: DevIdentityProvider
) -> requests.Response:
    return requests.post(
        f"{broker.url}/v1/token",
        json={"provider": provider, "id_token": idp.mint_id_token(audience=CLIENT_ID)},
        timeout=10,
    )


def browser_sign_in(browser: Browser, provider: str, idp: DevIdentityProvider) -> None:
    done = browser.login(idp, provider)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == SPA_HOME
    assert browser.cookie() is not None


def test_each_provider_reads_its_discovery_document_once(
    broker_for: Callable[[Idps], LiveServer], aws: Any, oidc_provider: DevIdentityProvider
) -> None:
    with DevIdentityProvider() as other:
        other.add_user(ALICE_SUB, name="Alice Elsewhere")
        idps = {"okta": (oidc_provider, oidc_provider.issuer), "other": (other, other.issuer)}
        server = broker_for(idps)
        # Nothing is read before a sign-in needs it.
        assert (oidc_provider.discovery_fetches, other.discovery_fetches) == (0, 0)

        # okta: the browser login first (endpoints, then keys for its id token), twice,
        # then a mobile id token, credentials and the IdP logout link.
        browser = Browser(server)
        browser_sign_in(browser, "okta", oidc_provider)
        browser_sign_in(browser, "okta", oidc_provider)
        assert browser.api("POST", "/v1/credentials").status_code == 200
        mobile = mobile_sign_in(server, "okta", oidc_provider)
        assert mobile.status_code == 200, mobile.text
        out = browser.api("POST", "/v1/logout")
        assert out.json()["end_session_url"].startswith(oidc_provider.url("/logout?"))

        # other: a mobile id token first (keys), then the browser login (endpoints).
        mobile = mobile_sign_in(server, "other", other)
        assert mobile.status_code == 200, mobile.text
        browser_sign_in(Browser(server), "other", other)

        assert oidc_provider.discovery_fetches == 1
        assert other.discovery_fetches == 1
        assert (oidc_provider.jwks_fetches, other.jwks_fetches) == (1, 1)
        # Every sign-in was real: the browser's reached the token endpoint, and AWS vended.
        assert oidc_provider.token_requests == 2 and other.token_requests == 1
        assert "AssumeRole" in aws.recorder.operations()


def test_a_discovery_document_naming_another_issuer_is_refused_on_both_paths(
    broker_for: Callable[[Idps], LiveServer], aws: Any, oidc_provider: DevIdentityProvider
) -> None:
    # The same server under another name: its document names 127.0.0.1, not localhost.
    pinned = f"http://localhost:{oidc_provider.port}"
    idps = {"okta": (oidc_provider, pinned)}
    server = broker_for(idps)
    browser = Browser(server)

    refused = browser.get(f"{server.url}/v1/login/okta")
    assert refused.status_code == 302, refused.text
    location = refused.headers["Location"]
    assert location.split("?")[0] == SPA_HOME
    assert parse_qs(urlsplit(location).query) == {"error": ["upstream_unavailable"]}
    assert browser.cookie() is None

    mobile = mobile_sign_in(server, "okta", oidc_provider)
    assert mobile.status_code == 503, mobile.text
    assert mobile.json()["code"] == "upstream_unavailable"
    assert "broker_session" not in mobile.json() and "credentials" not in mobile.json()

    # Each path read the document and refused it; a refused document is read again.
    assert oidc_provider.discovery_fetches == 2
    assert oidc_provider.jwks_fetches == 0 and oidc_provider.token_requests == 0
    assert aws.recorder.requests() == []


def test_sign_ins_starting_together_share_one_discovery_fetch(
    broker_for: Callable[[Idps], LiveServer], aws: Any, oidc_provider: DevIdentityProvider
) -> None:
    idps = {"okta": (oidc_provider, oidc_provider.issuer)}
    server = broker_for(idps)
    browsers = [Browser(server) for _ in range(8)]
    start = threading.Barrier(len(browsers))

    def begin(browser: Browser) -> str:
        start.wait()
        return browser.begin("okta")

    with ThreadPoolExecutor(max_workers=len(browsers)) as pool:
        urls = list(pool.map(begin, browsers))

    assert all(url.startswith(oidc_provider.url("/authorize?")) for url in urls)
    assert oidc_provider.discovery_fetches == 1
    assert aws.recorder.requests() == []
