"""Browser sign-in end to end, over real HTTP: a live broker (Werkzeug thread), the local
OIDC provider, the moto server for vending, and a ``requests`` cookie jar standing in for
the browser (it keeps ``Secure`` cookies over loopback http, as Chromium does).

Every refusal checks what the browser sees (status and problem code, or the error
redirect), that no session cookie was set, and that nothing reached AWS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from identity.config.document import BrokerConfig
from identity.errors import ConfigError
from identity.providers.apple import AppleClientSecret
from identity.sealing import Sealer
from identity.store import Store
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.configs import SECRET_KEY, provider_dict
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.oidc_provider import ALICE_SUB
from tests.fixtures.providers import built_providers
from tests.fixtures.records import UNREADABLE_SEALED, spoil, spoil_sealed

CLIENT_ID = "broker-web"
CLIENT_SECRET = "broker-web-secret"
SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/app/"
NATIVE = "com.example.chat:/oauth"
COOKIE = "chime_broker_session"
PRE_LOGIN_COOKIE = f"__Host-{COOKIE}_login"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def replace_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    params = {k: v for k, v in query(url).items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v is not None})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))


def set_cookies(response: requests.Response) -> dict[str, str]:
    """Every ``Set-Cookie`` of ``response``, by cookie name, as sent."""
    found: dict[str, str] = {}
    for header in response.raw.headers.getlist("Set-Cookie"):
        found[header.split("=", 1)[0]] = header
    return found


def is_pre_login(name: str) -> bool:
    """Whether ``name`` is a pre-login cookie's (there is one per login in flight)."""
    return name.startswith(f"{PRE_LOGIN_COOKIE}_")


def pre_login_cookies(jar: requests.cookies.RequestsCookieJar) -> dict[str, str]:
    """The browser's pre-login cookies, by name."""
    return {c.name: c.value or "" for c in jar if is_pre_login(c.name)}


@pytest.fixture
def config_for(make_config: MakeConfig) -> Callable[..., BrokerConfig]:
    """``config_for(url, idps, exchange="sts")``: the broker at ``url`` with one ``oidc``
    provider per IdP, each of which knows the broker's callback. In a test without ``aws``,
    the AWS values are ones that nothing may call."""

    def build(
        url: str, idps: dict[str, DevIdentityProvider], exchange: str = "sts", **overrides: Any
    ) -> BrokerConfig:
        for name, idp in idps.items():
            idp.register_client(
                CLIENT_ID,
                client_secret=CLIENT_SECRET,
                redirect_uris=[f"{url}/v1/callback/{name}"],
            )
        return make_config(
            service__public_url=url,
            service__session_lifetime="2h",
            service__allowed_origins=[SPA],
            service__allowed_return_to=[SPA_HOME, NATIVE],
            service__default_return_to=SPA_HOME,
            providers=[
                {
                    "name": name,
                    "kind": "oidc",
                    "issuer": idp.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "scopes": ["openid", "email", "profile", "offline_access"],
                    "exchange": exchange,
                    "map": {
                        "user_id": "{sub}" if exchange == "cognito" else f"{name}-{{sub}}",
                        "display_name": "{name}",
                    },
                }
                for name, idp in idps.items()
            ],
            **overrides,
        )

    return build


class Browser:
    """A cookie jar that follows no redirect by itself, so each hop can be inspected."""

    def __init__(self, broker: LiveServer) -> None:
        self.broker = broker
        self.http = LoopbackSession()

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.http.get(url, allow_redirects=False, timeout=10, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.http.post(url, allow_redirects=False, timeout=10, **kwargs)

    def cookie(self, name: str = COOKIE) -> str | None:
        return self.http.cookies.get(name)

    def begin(self, provider: str = "okta", **params: str) -> str:
        """``GET /v1/login/{provider}``: the identity provider's authorization URL."""
        response = self.get(f"{self.broker.url}/v1/login/{provider}", params=params)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def authorize(self, idp: DevIdentityProvider, authorization_url: str) -> str:
        """Sign alice in at the provider: the callback URL it sends the browser to."""
        idp.next_login(ALICE_SUB)
        response = self.get(authorization_url)
        assert response.status_code == 302, response.text
        return response.headers["Location"]

    def login(
        self, idp: DevIdentityProvider, provider: str = "okta", **params: str
    ) -> requests.Response:
        """The whole sign-in; the broker's answer to the callback."""
        return self.get(self.authorize(idp, self.begin(provider, **params)))

    def api(self, method: str, path: str, origin: str | None = SPA) -> requests.Response:
        headers = {"Origin": origin} if origin is not None else {}
        return self.http.request(
            method, f"{self.broker.url}{path}", headers=headers, allow_redirects=False, timeout=10
        )


@pytest.fixture
def broker(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    config_for: Callable[..., BrokerConfig],
) -> LiveServer:
    return live_broker(lambda url: config_for(url, {"okta": oidc_provider}), clock=clock)


@pytest.fixture
def browser(broker: LiveServer) -> Browser:
    return Browser(broker)


@pytest.fixture
def offline(
    live_broker: Callable[..., LiveServer],
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    config_for: Callable[..., BrokerConfig],
) -> Browser:
    """A browser at a broker whose AWS endpoint refuses connections: for scenarios in
    which nothing is vended."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = live_broker(lambda url: config_for(url, {"okta": oidc_provider}), clock=clock)
    return Browser(server)


def assert_problem(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def assert_no_session_cookie(response: requests.Response) -> None:
    assert COOKIE not in set_cookies(response)


def assert_error_redirect(response: requests.Response, code: str, to: str = SPA_HOME) -> None:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.split("?")[0] == to
    assert query(location) == {"error": code}
    assert_no_session_cookie(response)


# -- the happy path ------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", ["sts", "cognito_developer"])
def test_login_session_credentials_logout(
    exchange: str,
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    config_for: Callable[..., BrokerConfig],
) -> None:
    server = live_broker(lambda url: config_for(url, {"okta": oidc_provider}, exchange))
    browser = Browser(server)

    authorization_url = browser.begin(return_to=f"{SPA_HOME}chat?room=1")
    sent = query(authorization_url)
    assert authorization_url.startswith(oidc_provider.url("/authorize?"))
    assert sent["redirect_uri"] == f"{server.url}/v1/callback/okta"
    assert sent["code_challenge_method"] == "S256"
    assert len(sent["code_challenge"]) == 43
    assert sent["state"] and sent["nonce"] and sent["state"] != sent["nonce"]
    assert set(sent["scope"].split()) == {"openid", "email", "profile", "offline_access"}
    [pre_login] = pre_login_cookies(browser.http.cookies).values()
    assert pre_login not in authorization_url and sent["state"] not in pre_login

    done = browser.get(browser.authorize(oidc_provider, authorization_url))
    assert done.status_code == 302
    assert done.headers["Location"] == f"{SPA_HOME}chat?room=1"
    cookie = set_cookies(done)[COOKIE]
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= set(flags)
    # A browser session vends only when the SPA asks for credentials.
    assert aws.recorder.requests() == []

    who = browser.api("GET", "/v1/session")
    assert who.status_code == 200, who.text
    assert who.headers["Access-Control-Allow-Origin"] == SPA
    assert who.headers["Access-Control-Allow-Credentials"] == "true"
    me = who.json()
    assert me["provider"] == "okta"
    assert me["user_id"] == f"okta-{ALICE_SUB}"
    assert me["display_name"] == "Alice Example"
    assert me["app_instance_user_arn"] == f"{aws.app_instance_arn}/user/okta-{ALICE_SUB}"
    assert me["expires_at"].endswith("Z")

    issued = browser.api("POST", "/v1/credentials")
    assert issued.status_code == 200, issued.text
    assert issued.headers["Cache-Control"].startswith("no-store")
    body = issued.json()
    assert body["app_instance_user_arn"] == me["app_instance_user_arn"]
    assert "broker_session" not in body
    assert body["credentials"]["access_key_id"]
    expected = "AssumeRole" if exchange == "sts" else "GetOpenIdTokenForDeveloperIdentity"
    assert expected in aws.recorder.operations()

    out = browser.api("POST", "/v1/logout")
    assert out.status_code == 200, out.text
    end_session_url = out.json()["end_session_url"]
    assert end_session_url.startswith(oidc_provider.url("/logout?"))
    assert query(end_session_url)["client_id"] == CLIENT_ID
    cleared = set_cookies(out)[COOKIE].lower()
    assert "expires=thu, 01 jan 1970" in cleared or "max-age=0" in cleared
    assert browser.cookie() is None

    # The IdP accepts the logout URL it was handed (id_token_hint included).
    assert browser.get(end_session_url).status_code == 200
    assert oidc_provider.logouts[-1].sub == ALICE_SUB
    assert oidc_provider.logouts[-1].id_token_hint_valid

    aws.recorder.reset()
    assert_problem(browser.api("GET", "/v1/session"), 401, "unauthenticated")
    assert_problem(browser.api("POST", "/v1/credentials"), 401, "unauthenticated")
    assert aws.recorder.requests() == []


def test_form_post_callback_finishes_the_login(
    offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    callback = offline.authorize(oidc_provider, offline.begin())
    parts = urlsplit(callback)
    done = offline.post(
        urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), data=query(callback)
    )
    assert done.status_code == 302
    assert done.headers["Location"] == SPA_HOME
    assert COOKIE in set_cookies(done)


def test_two_logins_in_flight_in_one_browser_both_finish(
    offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    first, second = offline.begin(), offline.begin()
    second_done = offline.get(offline.authorize(oidc_provider, second))
    first_done = offline.get(offline.authorize(oidc_provider, first))
    assert second_done.status_code == first_done.status_code == 302
    assert COOKIE in set_cookies(second_done) and COOKIE in set_cookies(first_done)


def test_cancelled_login_goes_back_with_access_denied(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    authorization_url = browser.begin()
    page = browser.get(authorization_url)
    assert page.status_code == 200 and "Cancel" in page.text
    # What the login page's Cancel button posts.
    cancelled = browser.post(
        oidc_provider.url("/authorize"), data={**query(authorization_url), "action": "cancel"}
    )
    assert cancelled.status_code == 302
    callback = cancelled.headers["Location"]
    assert query(callback)["error"] == "access_denied"
    assert_error_redirect(browser.get(callback), "access_denied")
    assert browser.cookie() is None
    assert aws.recorder.requests() == []


# -- the transaction: state, browser binding, PKCE, iss, nonce ----------------------------


def test_callback_without_state_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    response = browser.get(replace_query(callback, state=None))
    assert_problem(response, 400, "invalid_request")
    assert_no_session_cookie(response)
    assert aws.recorder.requests() == []


def test_callback_with_an_unknown_state_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    response = browser.get(replace_query(callback, state=secrets.token_urlsafe(32)))
    assert_problem(response, 400, "invalid_request")
    assert_no_session_cookie(response)
    assert aws.recorder.requests() == []


def test_callback_with_a_used_state_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    assert COOKIE in set_cookies(browser.get(callback))
    replayed = browser.get(callback)
    assert_problem(replayed, 400, "invalid_request")
    assert_no_session_cookie(replayed)
    assert aws.recorder.requests() == []


def test_callback_after_the_transaction_expired_is_refused(
    offline: Browser, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> None:
    callback = offline.authorize(oidc_provider, offline.begin())
    clock.advance(601)
    response = offline.get(callback)
    assert_problem(response, 400, "invalid_request")
    assert_no_session_cookie(response)


def test_callback_in_another_browser_is_refused_and_the_right_one_still_works(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())

    stranger = Browser(broker)
    stranger.begin()  # the stranger has a pre-login cookie of its own
    refused = stranger.get(callback)
    assert_problem(refused, 400, "invalid_request")
    assert_no_session_cookie(refused)
    no_cookie = Browser(broker).get(callback)
    assert_problem(no_cookie, 400, "invalid_request")
    assert_no_session_cookie(no_cookie)
    assert aws.recorder.requests() == []

    done = browser.get(callback)
    assert done.status_code == 302 and COOKIE in set_cookies(done)


def test_an_injected_code_from_another_login_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    attacker = Browser(broker)
    attackers_code = query(attacker.authorize(oidc_provider, attacker.begin()))["code"]

    callback = browser.authorize(oidc_provider, browser.begin())
    response = browser.get(replace_query(callback, code=attackers_code))
    # The provider refuses: the code was issued for another PKCE challenge.
    assert_error_redirect(response, "invalid_token")
    assert browser.cookie() is None
    assert aws.recorder.requests() == []


def test_a_code_is_useless_without_the_pkce_verifier(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    callback = browser.authorize(oidc_provider, browser.begin())
    stolen = query(callback)["code"]
    redeemed = requests.post(
        oidc_provider.url("/token"),
        data={
            "grant_type": "authorization_code",
            "code": stolen,
            "redirect_uri": f"{broker.url}/v1/callback/okta",
        },
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )
    assert redeemed.status_code == 400
    assert "access_token" not in redeemed.json()
    # The provider spent the code on that attempt: the login cannot finish with it either.
    assert_error_redirect(browser.get(callback), "invalid_token")
    assert aws.recorder.requests() == []


def test_an_answer_naming_another_issuer_is_refused(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    config_for: Callable[..., BrokerConfig],
) -> None:
    with DevIdentityProvider() as other:
        other.add_user(ALICE_SUB, name="Alice Elsewhere")
        server = live_broker(lambda url: config_for(url, {"okta": oidc_provider, "other": other}))
        browser = Browser(server)
        callback = browser.authorize(oidc_provider, browser.begin("okta"))
        assert query(callback)["iss"] == oidc_provider.issuer

        swapped = browser.get(replace_query(callback, iss=other.issuer))
        assert_error_redirect(swapped, "invalid_request")

        # The provider advertises iss (RFC 9207): an answer without it is refused too.
        callback = browser.authorize(oidc_provider, browser.begin("okta"))
        assert_error_redirect(browser.get(replace_query(callback, iss=None)), "invalid_request")

        # Mix-up: the other provider's answer delivered to this provider's callback.
        from_other = browser.authorize(other, browser.begin("other"))
        misrouted = browser.get(f"{server.url}/v1/callback/okta?{urlsplit(from_other).query}")
        assert_problem(misrouted, 400, "invalid_request")
        assert_no_session_cookie(misrouted)
        assert browser.cookie() is None
        assert aws.recorder.requests() == []


def test_an_id_token_with_a_wrong_nonce_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    tampered = replace_query(browser.begin(), nonce=secrets.token_urlsafe(32))
    assert_error_redirect(browser.get(browser.authorize(oidc_provider, tampered)), "invalid_token")
    assert aws.recorder.requests() == []


def test_an_id_token_carrying_another_logins_nonce_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    earlier_nonce = query(browser.begin())["nonce"]
    replayed = replace_query(browser.begin(), nonce=earlier_nonce)
    assert_error_redirect(browser.get(browser.authorize(oidc_provider, replayed)), "invalid_token")
    assert aws.recorder.requests() == []


def test_an_id_token_without_a_nonce_is_refused(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    stripped = replace_query(browser.begin(), nonce=None)
    assert_error_redirect(browser.get(browser.authorize(oidc_provider, stripped)), "invalid_token")
    assert aws.recorder.requests() == []


def test_unknown_providers(offline: Browser) -> None:
    begun = offline.get(f"{offline.broker.url}/v1/login/nobody", params={"return_to": SPA_HOME})
    assert_error_redirect(begun, "unknown_provider")
    answered = offline.get(f"{offline.broker.url}/v1/callback/nobody?state=x&code=y")
    assert_problem(answered, 404, "unknown_provider")


# -- return_to ---------------------------------------------------------------------------


BAD_RETURN_TO = [
    "//evil.example/app/",
    "///evil.example/app/",
    "https:evil.example/app/",
    "https://app.example.chat\\@evil.example/app/",
    "https://app.example.chat/app/\\..\\..\\admin",
    "https:\\\\evil.example\\app\\",
    "https://app.example.chat@evil.example/app/",
    "https://user:pass@app.example.chat/app/",
    "https://evil.example#@app.example.chat/app/",
    "https://app.example.chat/app/%2e%2e/admin",
    "https://app.example.chat/app/%2E%2E%2Fadmin",
    "https%3A%2F%2Fevil.example%2Fapp%2F",
    "https://app.example.chat%2F@evil.example/app/",
    " https://app.example.chat/app/",
    "https://app.example.chat/app/\t",
    "https://app.example.chat/app/\nLocation: https://evil.example/",
    "javascript:alert(document.domain)//https://app.example.chat/app/",
    "JavaScript://app.example.chat/app/%0Aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https://app.example.chat:8443/app/",
    "https://app.example.chat:443/app/",
    "http://app.example.chat/app/",
    "https://app.example.chat.evil.example/app/",
    "https://app.example.chat/application",
    "https://app.example.chat/app/../admin",
    "https://app.example.chat/app/./../admin",
    "com.example.chat://evil.example/oauth",
    "com.example.chat:/oauthx",
    "",
]


@pytest.mark.parametrize("return_to", BAD_RETURN_TO)
def test_a_refused_return_to_lands_on_the_default(
    return_to: str, offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    done = offline.login(oidc_provider, return_to=return_to)
    assert done.status_code == 302
    assert done.headers["Location"] == SPA_HOME
    assert COOKIE in set_cookies(done)


def test_an_allowed_return_to_keeps_its_query_and_gets_the_error_before_the_fragment(
    offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    authorization_url = offline.begin(return_to=f"{SPA_HOME}rooms?tab=1#top")
    callback = offline.authorize(oidc_provider, authorization_url)
    failed = offline.get(replace_query(callback, code="not-a-code"))
    assert failed.headers["Location"] == f"{SPA_HOME}rooms?tab=1&error=invalid_token#top"


# -- Origin and CORS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "https://app.example.chat:8443",
        "http://app.example.chat",
        None,
    ],
)
def test_cookie_requests_from_an_unlisted_origin_are_refused(
    origin: str | None,
    broker: LiveServer,
    browser: Browser,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    browser.login(oidc_provider)
    for method, path in (
        ("POST", "/v1/credentials"),
        ("GET", "/v1/session"),
        ("POST", "/v1/logout"),
    ):
        response = browser.api(method, path, origin=origin)
        assert_problem(response, 403, "origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in response.headers
        assert_no_session_cookie(response)
    assert aws.recorder.requests() == []
    # Nothing was ended by the refused logout.
    assert browser.api("GET", "/v1/session").status_code == 200


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "https://app.example.chat.evil"]
)
def test_a_cors_preflight_from_an_unlisted_origin_is_refused(origin: str, offline: Browser) -> None:
    response = requests.options(
        f"{offline.broker.url}/v1/credentials",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert_problem(response, 403, "origin_not_allowed")
    assert not any(name.lower().startswith("access-control-allow") for name in response.headers)


def test_a_cors_preflight_from_a_listed_origin_is_answered(offline: Browser) -> None:
    response = requests.options(
        f"{offline.broker.url}/v1/credentials",
        headers={"Origin": SPA, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == SPA
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers["Vary"]


def test_bearer_requests_need_no_origin(
    broker: LiveServer, oidc_provider: DevIdentityProvider
) -> None:
    # The native flow's bearer token works from anywhere: it is not a cookie.
    code, verifier = native_login(Browser(broker), oidc_provider)
    token = exchange_code(broker, code, verifier).json()["broker_session"]["token"]
    who = requests.get(
        f"{broker.url}/v1/session",
        headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
        timeout=10,
    )
    assert who.status_code == 200
    assert "Access-Control-Allow-Origin" not in who.headers


# -- the session id ----------------------------------------------------------------------


def test_a_session_id_from_before_the_login_is_dead_after_it(
    offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    offline.login(oidc_provider)
    before = offline.cookie()
    assert before is not None
    offline.login(oidc_provider)
    after = offline.cookie()
    assert after is not None and after != before

    old = Browser(offline.broker)
    old.http.cookies.set(COOKIE, before, domain="127.0.0.1", path="/")
    assert_problem(old.api("GET", "/v1/session"), 401, "unauthenticated")
    assert offline.api("GET", "/v1/session").status_code == 200


def test_a_planted_session_id_never_becomes_a_session(
    offline: Browser, oidc_provider: DevIdentityProvider
) -> None:
    planted = "cbs_" + secrets.token_urlsafe(32)
    offline.http.cookies.set(COOKIE, planted, domain="127.0.0.1", path="/")
    done = offline.login(oidc_provider)
    assert offline.cookie() != planted
    assert planted not in set_cookies(done)[COOKIE]
    attacker = Browser(offline.broker)
    attacker.http.cookies.set(COOKIE, planted, domain="127.0.0.1", path="/")
    assert_problem(attacker.api("GET", "/v1/session"), 401, "unauthenticated")


# -- re-checking the user with the IdP ---------------------------------------------------


def test_the_session_is_rechecked_with_the_idp_and_ends_when_it_refuses(
    broker: LiveServer,
    browser: Browser,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    aws: Any,
) -> None:
    browser.login(oidc_provider)
    assert browser.api("POST", "/v1/credentials").status_code == 200
    asked = oidc_provider.token_requests

    clock.advance(16 * 60)
    assert browser.api("POST", "/v1/credentials").status_code == 200
    assert oidc_provider.token_requests == asked + 1  # one refresh at the IdP

    assert oidc_provider.revoke_refresh_tokens(ALICE_SUB) >= 1
    clock.advance(16 * 60)
    aws.recorder.reset()
    refused = browser.api("POST", "/v1/credentials")
    assert_problem(refused, 401, "reauthentication_required")
    assert browser.cookie() is None
    assert aws.recorder.requests() == []
    assert_problem(browser.api("GET", "/v1/session"), 401, "unauthenticated")


def test_a_cognito_session_vends_with_the_refreshed_id_token(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    config_for: Callable[..., BrokerConfig],
) -> None:
    server = live_broker(
        lambda url: config_for(url, {"okta": oidc_provider}, "cognito"), clock=clock
    )
    browser = Browser(server)
    browser.login(oidc_provider)
    assert browser.api("POST", "/v1/credentials").status_code == 200
    [first] = [c["Logins"] for c in aws.recorder.calls("GetCredentialsForIdentity")]

    clock.advance(16 * 60)
    aws.recorder.reset()
    assert browser.api("POST", "/v1/credentials").status_code == 200
    [second] = [c["Logins"] for c in aws.recorder.calls("GetCredentialsForIdentity")]
    key = oidc_provider.issuer.removeprefix("http://")
    assert second[key] != first[key]
    refreshed = jwt.decode(second[key], options={"verify_signature": False})
    assert refreshed["sub"] == ALICE_SUB


def test_no_recheck_before_the_interval(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> None:
    browser.login(oidc_provider)
    asked = oidc_provider.token_requests
    clock.advance(14 * 60)
    assert browser.api("POST", "/v1/credentials").status_code == 200
    assert oidc_provider.token_requests == asked


@pytest.fixture
def stored_broker(
    live_broker: Callable[..., LiveServer],
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    config_for: Callable[..., BrokerConfig],
    local_store: Store,
) -> LiveServer:
    """The ``broker``, keeping its state in ``local_store``."""
    return live_broker(
        lambda url: config_for(url, {"okta": oidc_provider}), clock=clock, store=local_store
    )


@pytest.mark.parametrize("how", UNREADABLE_SEALED)
def test_a_login_cookie_in_a_form_this_version_does_not_read_is_refused(
    how: str, broker: LiveServer, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    browser = Browser(broker)
    authorization = browser.begin()
    [(name, value)] = pre_login_cookies(browser.http.cookies).items()
    context = "pre-login:" + name.removeprefix(f"{PRE_LOGIN_COOKIE}_")
    sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    plain = Sealer(SECRET_KEY).open(sealed, context=context)
    assert plain is not None
    if how == "sealed with another key":
        spoiled = Sealer(SECRET_KEY + "-rotated").seal(plain, context=context)
    else:
        spoiled = Sealer(SECRET_KEY).seal(spoil(plain, how, field="state"), context=context)
    browser.http.cookies.set(
        name, base64.urlsafe_b64encode(spoiled).rstrip(b"=").decode(), domain="127.0.0.1", path="/"
    )

    response = browser.get(browser.authorize(oidc_provider, authorization))

    assert_problem(response, 400, "invalid_request")
    assert_no_session_cookie(response)
    assert aws.recorder.requests() == []


# -- native apps -------------------------------------------------------------------------


def native_login(
    browser: Browser, idp: DevIdentityProvider, return_to: str = f"{NATIVE}/done"
) -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    done = browser.login(
        idp, return_to=return_to, code_challenge=s256(verifier), code_challenge_method="S256"
    )
    assert done.status_code == 302, done.text
    location = done.headers["Location"]
    assert location.startswith(f"{return_to}?code=")
    assert_no_session_cookie(done)
    return query(location)["code"], verifier


def exchange_code(broker: LiveServer, code: str, verifier: str) -> requests.Response:
    return requests.post(
        f"{broker.url}/v1/token",
        json={"provider": "okta", "code": code, "code_verifier": verifier},
        timeout=10,
    )


def test_native_login_hands_over_a_code_for_a_bearer_session(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    code, verifier = native_login(browser, oidc_provider)
    assert browser.cookie() is None
    assert aws.recorder.requests() == []

    exchanged = exchange_code(broker, code, verifier)
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["user_id"] == f"okta-{ALICE_SUB}"
    token = body["broker_session"]["token"]
    assert "AssumeRole" in aws.recorder.operations()
    refreshed = requests.post(
        f"{broker.url}/v1/credentials", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert refreshed.status_code == 200
    out = requests.post(
        f"{broker.url}/v1/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert out.json()["end_session_url"].startswith(oidc_provider.url("/logout?"))


def test_a_native_code_works_once(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    code, verifier = native_login(browser, oidc_provider)
    assert exchange_code(broker, code, verifier).status_code == 200
    aws.recorder.reset()
    assert_problem(exchange_code(broker, code, verifier), 400, "invalid_request")
    assert aws.recorder.requests() == []


def test_a_late_native_code_is_refused(
    broker: LiveServer,
    browser: Browser,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    aws: Any,
) -> None:
    code, verifier = native_login(browser, oidc_provider)
    clock.advance(61)
    assert_problem(exchange_code(broker, code, verifier), 400, "invalid_request")
    assert aws.recorder.requests() == []


def test_a_native_code_with_the_wrong_verifier_is_refused_and_spent(
    broker: LiveServer, browser: Browser, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    code, verifier = native_login(browser, oidc_provider)
    assert_problem(exchange_code(broker, code, secrets.token_urlsafe(48)), 400, "invalid_request")
    assert_problem(exchange_code(broker, code, verifier), 400, "invalid_request")
    assert aws.recorder.requests() == []


@pytest.mark.parametrize("how", UNREADABLE_SEALED)
def test_a_native_code_stored_in_a_form_this_version_does_not_read_is_refused(
    how: str,
    stored_broker: LiveServer,
    oidc_provider: DevIdentityProvider,
    local_store: Store,
    aws: Any,
) -> None:
    code, verifier = native_login(Browser(stored_broker), oidc_provider)
    key = "native:" + Sealer(SECRET_KEY).key_hash("native-code", code)
    spoil_sealed(local_store, key, how, field="code_challenge")

    assert_problem(exchange_code(stored_broker, code, verifier), 400, "invalid_request")
    assert aws.recorder.requests() == []


@pytest.mark.parametrize(
    "return_to",
    [
        None,
        "com.example.chat:/elsewhere",
        "https://evil.example/oauth",
        "http://app.example.chat/app/",
    ],
)
def test_a_native_login_needs_an_allowed_return_to(return_to: str | None, offline: Browser) -> None:
    params = {"code_challenge": s256(secrets.token_urlsafe(48)), "code_challenge_method": "S256"}
    if return_to is not None:
        params["return_to"] = return_to
    response = offline.get(f"{offline.broker.url}/v1/login/okta", params=params)
    assert_problem(response, 400, "invalid_request")
    assert not any(is_pre_login(name) for name in set_cookies(response))


@pytest.mark.parametrize(
    ("challenge", "method"),
    [("too-short", "S256"), (s256("x" * 43), "plain"), ("*" * 43, "S256")],
)
def test_a_native_login_needs_an_s256_challenge(
    challenge: str, method: str, offline: Browser
) -> None:
    response = offline.get(
        f"{offline.broker.url}/v1/login/okta",
        params={
            "return_to": f"{NATIVE}/done",
            "code_challenge": challenge,
            "code_challenge_method": method,
        },
    )
    assert_error_redirect(response, "invalid_request", to=f"{NATIVE}/done")


# -- social kinds: real endpoints by default, every one overridable ----------------------


def apple_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_social_kinds_send_the_browser_to_their_real_endpoints(
    make_config: MakeConfig,
) -> None:
    config = make_config(
        providers=[
            provider_dict(
                "google",
                client_ids=["web.apps.googleusercontent.com", "ios-app"],
                client_secret="g-secret",
            ),
            provider_dict(
                "apple",
                client_ids=["com.example.chat.web", "com.example.chat"],
                team_id="TEAM123456",
                key_id="KEY1234567",
                private_key=apple_key_pem(),
            ),
            provider_dict("facebook"),
            provider_dict("amazon", client_secret="a-secret"),
        ]
    )
    built = built_providers(config).redirect
    expected = {
        "google": (
            "https://accounts.google.com/o/oauth2/v2/auth",
            "web.apps.googleusercontent.com",
            True,
        ),
        "apple": ("https://appleid.apple.com/auth/authorize", "com.example.chat.web", True),
        "facebook": ("https://www.facebook.com/dialog/oauth", "1234567890", False),
        "amazon": ("https://www.amazon.com/ap/oa", "amzn1.application-oa2-client.example", False),
    }
    for name, (endpoint, client_id, with_nonce) in expected.items():
        url = built[name].authorization_url(
            redirect_uri=f"https://auth.example.chat/v1/callback/{name}",
            state="s" * 43,
            nonce="n" * 43,
            code_challenge="c" * 43,
        )
        assert url.split("?")[0] == endpoint
        sent = query(url)
        assert sent["client_id"] == client_id
        assert sent["code_challenge_method"] == "S256" and sent["code_challenge"] == "c" * 43
        assert sent["state"] == "s" * 43
        assert ("nonce" in sent) is with_nonce
    assert (
        query(
            built["apple"].authorization_url(
                redirect_uri="https://auth.example.chat/v1/callback/apple",
                state="s" * 43,
                nonce="n" * 43,
                code_challenge="c" * 43,
            )
        )["response_mode"]
        == "form_post"
    )
    assert built["apple"].response_mode == "form_post"


def test_social_kinds_without_their_secrets_have_no_browser_login(
    make_config: MakeConfig,
) -> None:
    config = make_config(
        providers=[provider_dict("google"), provider_dict("apple"), provider_dict("amazon")]
    )
    assert built_providers(config).redirect == {}


def test_an_unusable_apple_key_fails_start_up(make_config: MakeConfig) -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    for bad in ("not a key", rsa_pem):
        config = make_config(
            providers=[provider_dict("apple", team_id="T", key_id="K", private_key=bad)]
        )
        with pytest.raises(ConfigError) as refused:
            built_providers(config)
        assert refused.value.problems[0].startswith("providers[0].private_key")


def test_apples_client_secret_is_an_es256_jwt_of_the_team() -> None:
    pem = apple_key_pem()
    secret = AppleClientSecret(
        team_id="TEAM123456",
        key_id="KEY1234567",
        private_key_pem=pem,
        client_id="com.example.chat.web",
    )
    token = secret()
    assert secret() == token  # reused, not signed per request
    public = serialization.load_pem_private_key(pem.encode(), None).public_key()
    claims = jwt.decode(token, public, algorithms=["ES256"], audience="https://appleid.apple.com")
    assert jwt.get_unverified_header(token)["kid"] == "KEY1234567"
    assert claims["iss"] == "TEAM123456" and claims["sub"] == "com.example.chat.web"
    assert claims["exp"] - claims["iat"] <= 180 * 86400


def social_broker(
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    idp: DevIdentityProvider,
    entry: dict[str, Any],
) -> LiveServer:
    """A broker whose one provider is ``entry`` with every endpoint at the local ``idp``."""
    return live_broker(
        lambda url: make_config(
            service__public_url=url,
            providers=[
                {
                    **entry,
                    "issuer": idp.issuer,
                    "jwks_url": idp.url("/jwks"),
                    "authorize_url": idp.url("/authorize"),
                    "token_url": idp.url("/token"),
                    "exchange": "sts",
                }
            ],
        )
    )


def test_a_google_login_through_configured_endpoints(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    make_config: MakeConfig,
) -> None:
    server = social_broker(
        live_broker,
        make_config,
        oidc_provider,
        {
            "name": "google",
            "kind": "google",
            "client_ids": [CLIENT_ID, "ios-app"],
            "client_secret": CLIENT_SECRET,
            "map": {"user_id": "g-{sub}"},
        },
    )
    oidc_provider.register_client(
        CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{server.url}/v1/callback/google"]
    )
    browser = Browser(server)
    done = browser.login(oidc_provider, "google", return_to=SPA_HOME)
    assert done.headers["Location"] == SPA_HOME
    assert browser.api("GET", "/v1/session").json()["user_id"] == f"g-{ALICE_SUB}"
    assert browser.api("POST", "/v1/logout").json()["end_session_url"] is None


def test_an_apple_login_posts_back_and_signs_its_client_secret(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    make_config: MakeConfig,
) -> None:
    server = social_broker(
        live_broker,
        make_config,
        oidc_provider,
        {
            "name": "apple",
            "kind": "apple",
            "client_ids": [CLIENT_ID],
            "team_id": "TEAM123456",
            "key_id": "KEY1234567",
            "private_key": apple_key_pem(),
            "map": {"user_id": "apple-{sub}"},
        },
    )
    apple = server.app.extensions["chime_broker"].broker.redirect_providers["apple"]
    # The provider accepts exactly the client secret the broker signs and sends.
    oidc_provider.register_client(
        CLIENT_ID,
        client_secret=apple._client_secret(),
        redirect_uris=[f"{server.url}/v1/callback/apple"],
    )
    browser = Browser(server)
    authorization_url = browser.begin("apple", return_to=SPA_HOME)
    assert query(authorization_url)["scope"] == "name email"
    # The local provider knows OIDC scopes only and issues an id token for "openid",
    # which Apple issues always.
    callback = browser.authorize(
        oidc_provider, replace_query(authorization_url, scope="openid email")
    )
    parts = urlsplit(callback)
    done = browser.post(
        urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), data=query(callback)
    )
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME
    assert browser.api("GET", "/v1/session").json()["user_id"] == f"apple-{ALICE_SUB}"


def test_a_browser_session_outlives_a_secret_key_rotation(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    config_for: Callable[..., BrokerConfig],
    tmp_path: Any,
) -> None:
    """The cookie of a login made before the rotation keeps working on a broker with
    ``[new, old]``; a login made after it is sealed with the new key, which a broker that
    has only the old key cannot open."""
    old_key, new_key = "o" * 40, "n" * 40
    store = f"sqlite:///{tmp_path / 'state.db'}"

    def broker_with(keys: str | list[str]) -> LiveServer:
        server: LiveServer = live_broker(
            lambda url: config_for(
                url, {"okta": oidc_provider}, service__secret_key=keys, store=store
            )
        )
        return server

    # Each broker registers its own callback at the IdP: a login goes to the newest.
    browser = Browser(broker_with(old_key))
    assert browser.login(oidc_provider).status_code == 302
    rotated = broker_with([new_key, old_key])
    browser.broker = rotated
    assert browser.api("GET", "/v1/session").json()["user_id"] == f"okta-{ALICE_SUB}"
    issued = browser.api("POST", "/v1/credentials")
    assert issued.status_code == 200, issued.text
    assert issued.json()["credentials"]["access_key_id"]

    # A login at the rotated broker: the old-key broker cannot read its session.
    after = Browser(rotated)
    assert after.login(oidc_provider).status_code == 302
    assert after.api("POST", "/v1/credentials").status_code == 200
    after.broker = broker_with(old_key)
    aws.recorder.reset()
    assert_problem(after.api("POST", "/v1/credentials"), 401, "unauthenticated")
    assert aws.recorder.requests() == []
