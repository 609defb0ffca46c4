"""Pages for people, over real HTTP: a sign-in answer with no usable transaction (stale,
used, forged, from another browser), a login that cannot begin and an unsolicited SAML
response get a small HTML page in a browser (``Accept: text/html,...``) and the problem
document in an API client; the IdP logout link brings the person back to the app.

A live broker (Werkzeug thread), the local OIDC provider or the test SAML IdP, and a
``requests`` cookie jar standing in for the browser.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import pytest
import requests

from identity.config.document import BrokerConfig
from service.demo.dev_idp import DevIdentityProvider
from service.pages import PROBLEM_PAGE_CSP
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.saml_idp import SamlIdp, encode
from tests.integration import test_browser_login as browser_login
from tests.integration.test_saml_login import saml_config

CLIENT_ID = "broker-web"
CLIENT_SECRET = "broker-web-secret"
SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
NATIVE = "com.example.chat:/oauth"
COOKIE = "chime_broker_session"
# What Chromium sends when it navigates.
BROWSER_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def replace_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    params = {k: v for k, v in query(url).items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v is not None})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))


class PageReader(HTMLParser):
    """What a person sees on the page: texts by element id, link targets, stylesheets, and
    anything a CSP without inline code would refuse."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.stylesheets: list[str] = []
        self.inline: list[str] = []
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        names = set(found)
        if tag in ("script", "style") or "style" in names or any(n.startswith("on") for n in names):
            self.inline.append(tag)
        if tag == "link" and found.get("rel") == "stylesheet":
            self.stylesheets.append(found.get("href") or "")
        element_id = found.get("id")
        if tag == "a" and element_id:
            self.links[element_id] = found.get("href") or ""
        if element_id:
            self.texts.setdefault(element_id, "")
            self._open.append(element_id)
        elif tag not in ("meta", "link", "br"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.texts[element_id] += data

    def text(self, element_id: str) -> str:
        return " ".join(self.texts[element_id].split())


class Browser(browser_login.Browser):
    """The sign-in tests' cookie jar, asking for pages as Chromium does."""

    def get(
        self, url: str, accept: str | None = BROWSER_ACCEPT, **kwargs: Any
    ) -> requests.Response:
        headers = {"Accept": accept} if accept is not None else {}
        return self.http.get(url, headers=headers, allow_redirects=False, timeout=10, **kwargs)


def assert_page(
    response: requests.Response, status: int, code: str, heading: str, back: str | None
) -> PageReader:
    """A sign-in page: the status, HTML, the page CSP, no inline code, the served
    stylesheet, the words and the way back (``None``: it says to close the window)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == PROBLEM_PAGE_CSP
    assert response.headers["Cache-Control"] == "no-store"
    assert "Accept" in response.headers["Vary"]
    page = PageReader(response.text)
    assert page.inline == []
    assert page.stylesheets == ["/pages/style.css"]
    assert page.text("heading") == heading
    assert f'data-code="{code}"' in response.text
    assert page.text("detail").endswith(code)
    if back is None:
        assert "back" not in page.links
        assert "close this window" in page.text("close")
    else:
        assert page.links["back"] == back
        assert page.text("back") == "Back to the app"
    assert page.text("request-id") == response.headers["X-Request-Id"]
    return page


def assert_problem(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def oidc_config(
    make_config: MakeConfig,
    url: str,
    idp: DevIdentityProvider,
    *,
    default_return_to: str | None = SPA_HOME,
    allowed_return_to: tuple[str, ...] = (SPA_HOME, NATIVE),
) -> BrokerConfig:
    """The broker at ``url`` with the ``okta`` OIDC provider at ``idp``; the IdP lets the
    client come back to ``SPA_HOME`` after logout."""
    idp.register_client(
        CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[f"{url}/v1/callback/okta"],
        post_logout_redirect_uris=[SPA_HOME],
    )
    service: dict[str, Any] = {
        "service__public_url": url,
        "service__allowed_origins": [SPA],
        "service__allowed_return_to": list(allowed_return_to),
    }
    if default_return_to is not None:
        service["service__default_return_to"] = default_return_to
    return make_config(
        **service,
        providers=[
            {
                "name": "okta",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scopes": ["openid", "email", "profile"],
                "exchange": "sts",
                "map": {"user_id": "okta-{sub}", "display_name": "{name}"},
            }
        ],
    )


@pytest.fixture
def offline_env(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS refuses connections: nothing in these scenarios vends."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def start_broker(
    offline_env: None,
    live_broker: Callable[..., LiveServer],
    oidc_provider: DevIdentityProvider,
    make_config: MakeConfig,
    clock: FakeClock,
) -> Callable[..., Browser]:
    def start(**overrides: Any) -> Browser:
        server = live_broker(
            lambda url: oidc_config(make_config, url, oidc_provider, **overrides), clock=clock
        )
        return Browser(server)

    return start


@pytest.fixture
def browser(start_broker: Callable[..., Browser]) -> Browser:
    return start_broker()


# -- the OIDC callback ---------------------------------------------------------------------


def test_a_used_callback_in_a_browser_is_a_page_that_leads_back_to_the_app(
    browser: Browser, oidc_provider: DevIdentityProvider
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    done = browser.get(callback)
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME

    # Back button, then the same answer again: a page, not JSON.
    again = browser.get(callback)
    page = assert_page(
        again, 400, "invalid_request", "This sign-in link is stale or already used", SPA_HOME
    )
    assert "go back in the browser" in page.text("explanation")
    assert COOKIE not in again.headers.get("Set-Cookie", "")

    stylesheet = browser.get(f"{browser.broker.url}/pages/style.css", accept="text/css,*/*;q=0.1")
    assert stylesheet.status_code == 200
    assert stylesheet.headers["Content-Type"] == "text/css; charset=utf-8"
    assert "--accent" in stylesheet.text


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/problem+json, text/html;q=0.5"]
)
def test_an_api_client_keeps_the_problem_document(
    accept: str | None, browser: Browser, oidc_provider: DevIdentityProvider
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    assert browser.get(callback).status_code == 302
    again = browser.get(callback, accept=accept)
    assert_problem(again, 400, "invalid_request")
    assert "Accept" in again.headers["Vary"]


@pytest.mark.parametrize(
    ("spoil", "heading"),
    [
        ({"state": None}, "This sign-in request is not valid"),
        ({"state": "not a state"}, "This sign-in request is not valid"),
        ({"state": secrets.token_urlsafe(32)}, "This sign-in link is stale or already used"),
    ],
    ids=["no-state", "malformed-state", "forged-state"],
)
def test_a_forged_or_unknown_answer_is_a_page(
    spoil: dict[str, str | None],
    heading: str,
    browser: Browser,
    oidc_provider: DevIdentityProvider,
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    response = browser.get(replace_query(callback, **spoil))
    assert_page(response, 400, "invalid_request", heading, SPA_HOME)
    # The real answer still finishes the login it belongs to.
    assert browser.get(callback).status_code == 302


def test_an_answer_in_another_browser_is_a_page_that_says_so(
    browser: Browser, oidc_provider: DevIdentityProvider
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    other = Browser(browser.broker)
    assert_page(
        other.get(callback),
        400,
        "invalid_request",
        "This sign-in was started in another browser",
        SPA_HOME,
    )


def test_a_late_answer_is_a_page(
    browser: Browser, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    clock.advance(601)
    late = browser.get(callback)
    assert_page(late, 400, "invalid_request", "This sign-in expired", SPA_HOME)


def test_a_login_that_cannot_begin_is_a_page(browser: Browser) -> None:
    # A native login must name an allowed return_to: there is nowhere to send the error.
    response = browser.get(
        f"{browser.broker.url}/v1/login/okta?code_challenge=short&return_to=https://evil.example/"
    )
    assert_page(response, 400, "invalid_request", "This sign-in request is not valid", SPA_HOME)
    unknown = browser.get(f"{browser.broker.url}/v1/callback/nobody?state=x&code=y")
    assert_page(unknown, 404, "unknown_provider", "No such sign-in option", SPA_HOME)


def test_everything_on_the_page_is_escaped(
    start_broker: Callable[..., Browser], oidc_provider: DevIdentityProvider
) -> None:
    home = SPA_HOME + '?from=broker&q="<b>'
    browser = start_broker(default_return_to=home)
    name = '<img src=x onerror="alert(1)">'
    response = browser.get(f"{browser.broker.url}/v1/callback/{quote(name)}?state=x")
    assert response.status_code == 404
    assert "<img" not in response.text and "<b>" not in response.text
    assert html.escape(name) in response.text
    assert f'href="{html.escape(home, quote=True)}"' in response.text
    page = assert_page(response, 404, "unknown_provider", "No such sign-in option", home)
    assert name in page.text("detail")


def test_without_a_web_page_to_go_back_to_the_page_says_to_close_the_window(
    start_broker: Callable[..., Browser],
) -> None:
    browser = start_broker(default_return_to=None, allowed_return_to=(NATIVE,))
    response = browser.get(f"{browser.broker.url}/v1/callback/okta?state=x&code=y")
    assert_page(response, 400, "invalid_request", "This sign-in request is not valid", None)


def test_a_failure_with_a_known_transaction_still_goes_back_to_the_app(
    browser: Browser, oidc_provider: DevIdentityProvider
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    refused = browser.get(replace_query(callback, code="forged-code"))
    assert refused.status_code == 302
    assert refused.headers["Location"].startswith(SPA_HOME + "?error=")


# -- the SAML ACS --------------------------------------------------------------------------


def test_an_unsolicited_saml_response_in_a_browser_is_a_page(
    offline_env: None, live_broker: Callable[..., LiveServer], aws: Any, saml_idp: SamlIdp
) -> None:
    server = live_broker(lambda url: saml_config(url, aws, saml_idp))
    acs = f"{server.url}/v1/saml/corp/acs"
    saml_response = encode(
        saml_idp.build_response(
            in_response_to=None,
            destination=acs,
            audience=f"{server.url}/v1/saml/corp/metadata",
            recipient=acs,
            name_id="alice-0001",
        )
    )
    http = LoopbackSession()
    form = {"SAMLResponse": saml_response, "RelayState": secrets.token_urlsafe(32)}
    posted = http.post(
        acs, data=form, headers={"Accept": BROWSER_ACCEPT}, allow_redirects=False, timeout=30
    )
    assert_page(
        posted, 401, "invalid_token", "The identity provider's answer was refused", SPA_HOME
    )
    api = http.post(acs, data=form, allow_redirects=False, timeout=30)
    assert_problem(api, 401, "invalid_token")


# -- signing out at the identity provider --------------------------------------------------


def test_the_idp_logout_link_comes_back_to_the_default_return_to(
    browser: Browser, oidc_provider: DevIdentityProvider
) -> None:
    assert browser.get(browser.authorize(oidc_provider, browser.begin())).status_code == 302
    out = browser.http.post(
        f"{browser.broker.url}/v1/logout", headers={"Origin": SPA}, allow_redirects=False
    )
    assert out.status_code == 200, out.text
    end_session_url = out.json()["end_session_url"]
    sent = query(end_session_url)
    assert sent["post_logout_redirect_uri"] == SPA_HOME
    assert sent["client_id"] == CLIENT_ID
    assert sent["id_token_hint"]

    # The IdP accepts it and sends the person back to the app.
    at_idp = browser.get(end_session_url)
    assert at_idp.status_code == 302, at_idp.text
    assert at_idp.headers["Location"].split("?")[0] == SPA_HOME
    assert oidc_provider.logouts[-1].redirected_to == SPA_HOME
    assert oidc_provider.logouts[-1].id_token_hint_valid


def test_without_a_default_return_to_the_idp_logout_link_has_no_way_back(
    start_broker: Callable[..., Browser], oidc_provider: DevIdentityProvider
) -> None:
    browser = start_broker(default_return_to=None)
    assert browser.get(browser.authorize(oidc_provider, browser.begin())).status_code == 302
    out = browser.http.post(
        f"{browser.broker.url}/v1/logout", headers={"Origin": SPA}, allow_redirects=False
    )
    sent = query(out.json()["end_session_url"])
    assert "post_logout_redirect_uri" not in sent
    assert re.fullmatch(r"[\w.-]+", sent["id_token_hint"])
