"""Starting a sign-in writes nothing to the store: the login transaction lives in a sealed
pre-login cookie of its own, and only the answer (OIDC callback, SAML ACS) writes, first
the transaction's single use in the replay cache, then the session.

Over real HTTP: a live broker (Werkzeug thread) on ``memory://`` or the test redis-server,
the local OIDC provider, the test SAML IdP, the moto server, and a ``requests`` cookie jar
standing in for the browser. Store contents are counted in the store itself: the memory
store's entries, or redis ``DBSIZE`` and ``KEYS``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from identity.config.document import BrokerConfig
from identity.login_transactions import MAX_LOGINS_IN_FLIGHT
from identity.logins import MAX_RETURN_TO
from identity.store import MemoryStore
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.configs import provider_dict
from tests.fixtures.live_server import LiveServer
from tests.fixtures.saml_idp import SamlIdp
from tests.integration.test_browser_login import (
    CLIENT_ID,
    CLIENT_SECRET,
    COOKIE,
    PRE_LOGIN_COOKIE,
    SPA,
    SPA_HOME,
    Browser,
    assert_no_session_cookie,
    assert_problem,
    is_pre_login,
    pre_login_cookies,
    s256,
    set_cookies,
)
from tests.integration.test_sign_in_pages import BROWSER_ACCEPT, PageReader

NATIVE = "com.example.chat:/oauth"
STARTS = 200


class Counted:
    """The broker's store as the test sees it: the ``MemoryStore`` the broker is built
    with, or the ``redis_url`` its config names; how many keys it holds, and which (redis
    only)."""

    def __init__(self, memory: MemoryStore | None = None, redis_url: str | None = None) -> None:
        self.memory = memory
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url) if redis_url is not None else None

    def count(self) -> int:
        if self.memory is not None:
            return len(self.memory)
        assert self.redis is not None
        return int(self.redis.dbsize())

    def keys(self) -> set[str]:
        """The broker's keys, without the redis store's ``chime-broker:`` prefix."""
        assert self.redis is not None, "only redis lists its keys here"
        return {key.decode().removeprefix("chime-broker:") for key in self.redis.keys("*")}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Counted]:
    """The broker's store: a ``MemoryStore``, then an empty database on the redis-server."""
    if request.param == "memory":
        yield Counted(memory=MemoryStore())
        return
    counted = Counted(redis_url=request.getfixturevalue("redis_url"))
    yield counted
    assert counted.redis is not None
    counted.redis.close()


def both_kinds(
    make_config: MakeConfig, url: str, idp: DevIdentityProvider, saml: SamlIdp, **overrides: Any
) -> BrokerConfig:
    """The ``okta`` OIDC provider at ``idp`` and the ``corp`` SAML provider at ``saml``."""
    idp.register_client(
        CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{url}/v1/callback/okta"]
    )
    okta = provider_dict(
        "oidc",
        issuer=idp.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scopes=["openid", "email", "profile"],
        map={"user_id": "okta-{sub}"},
    )
    corp = provider_dict(
        "saml",
        idp_metadata_url=saml.metadata_url,
        sp_entity_id=f"{url}/v1/saml/corp/metadata",
        map={"user_id": "corp-{name_id}"},
    )
    return make_config(
        service__public_url=url,
        service__allowed_origins=[SPA],
        service__allowed_return_to=[SPA_HOME, NATIVE],
        service__default_return_to=SPA_HOME,
        providers=[okta, corp],
        **overrides,
    )


@pytest.fixture
def broker(
    store: Counted,
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    oidc_provider: DevIdentityProvider,
    saml_idp: SamlIdp,
    clock: FakeClock,
    aws: Any,
) -> LiveServer:
    overrides = {"store": store.redis_url} if store.redis_url is not None else {}
    return live_broker(
        lambda url: both_kinds(make_config, url, oidc_provider, saml_idp, **overrides),
        clock=clock,
        **({"store": store.memory} if store.memory is not None else {}),
    )


def start(browser: Browser, provider: str, **params: str) -> requests.Response:
    response = browser.get(f"{browser.broker.url}/v1/login/{provider}", params=params)
    assert response.status_code == 302, response.text
    return response


def authorized(broker: LiveServer, idp: DevIdentityProvider) -> tuple[Browser, str]:
    """A browser that began a login and signed in at the IdP; the callback it is to open."""
    browser = Browser(broker)
    return browser, browser.authorize(idp, browser.begin())


def only_pre_login_cookie(browser: Browser) -> tuple[str, str]:
    """The name and value of the one pre-login cookie ``browser`` holds."""
    [(name, value)] = pre_login_cookies(browser.http.cookies).items()
    return name, value


def carrying(broker: LiveServer, cookies: dict[str, str]) -> Browser:
    """Another browser, holding ``cookies`` (captured from the first)."""
    browser = Browser(broker)
    for name, value in cookies.items():
        browser.http.cookies.set(name, value, domain="127.0.0.1", path="/")
    return browser


def assert_refused(response: requests.Response) -> None:
    assert_problem(response, 400, "invalid_request")
    assert_no_session_cookie(response)


# -- starts ------------------------------------------------------------------------------


def test_anonymous_login_starts_write_nothing_to_the_store(
    broker: LiveServer,
    store: Counted,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    before = store.count()
    challenge = s256(secrets.token_urlsafe(48))
    kinds: list[tuple[str, dict[str, str]]] = [
        ("okta", {"return_to": SPA_HOME}),
        ("okta", {"return_to": f"{NATIVE}/done", "code_challenge": challenge}),
        ("corp", {"return_to": SPA_HOME}),
        ("corp", {"return_to": f"{NATIVE}/done", "code_challenge": challenge}),
    ]
    for i in range(STARTS):
        provider, params = kinds[i % len(kinds)]
        begun = start(Browser(broker), provider, **params)  # a new anonymous client each time
        assert [name for name in set_cookies(begun) if is_pre_login(name)]

    assert store.count() == before
    assert aws.recorder.requests() == []

    # Only the answer writes: the spent state, then the session.
    browser = Browser(broker)
    done = browser.login(oidc_provider)
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME
    assert COOKIE in set_cookies(done)
    if store.redis is not None:
        written = store.keys()
        assert len([k for k in written if k.startswith("login-spent:")]) == 1
        assert [k for k in written if k.startswith("session:")]
    assert store.count() > before
    assert browser.api("GET", "/v1/session").status_code == 200


# -- answers -----------------------------------------------------------------------------


def test_a_replayed_callback_is_refused_and_opens_no_second_session(
    broker: LiveServer,
    store: Counted,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    browser, callback = authorized(broker, oidc_provider)
    captured = pre_login_cookies(browser.http.cookies)
    done = browser.get(callback)
    assert done.status_code == 302 and COOKIE in set_cookies(done)
    # The spent login's cookie is removed with the answer.
    assert pre_login_cookies(browser.http.cookies) == {}
    after_login = store.count()
    token_requests = oidc_provider.token_requests

    # Replayed by someone who captured the cookie and the answer: the replay cache refuses.
    replayed = carrying(broker, captured).get(callback)
    assert_refused(replayed)
    # And in the browser itself (the back button).
    again = browser.get(callback)
    assert_refused(again)

    assert store.count() == after_login  # no second session
    assert oidc_provider.token_requests == token_requests  # refused before the IdP
    assert aws.recorder.requests() == []


def test_of_two_answers_at_once_with_the_same_state_one_signs_in(
    broker: LiveServer, oidc_provider: DevIdentityProvider
) -> None:
    browser, callback = authorized(broker, oidc_provider)
    cookies = pre_login_cookies(browser.http.cookies)
    barrier = threading.Barrier(2)
    answers: list[requests.Response] = []

    def answer() -> None:
        tab = carrying(broker, cookies)
        barrier.wait()
        answers.append(tab.get(callback))

    threads = [threading.Thread(target=answer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [302, 400]
    [won] = [a for a in answers if a.status_code == 302]
    assert won.headers["Location"] == SPA_HOME and COOKIE in set_cookies(won)
    [lost] = [a for a in answers if a.status_code == 400]
    # Refused by the broker's replay cache, not by the IdP spending the code.
    assert_refused(lost)


def test_a_callback_with_the_cookie_of_another_start_is_refused(
    broker: LiveServer,
    store: Counted,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    browser, callback = authorized(broker, oidc_provider)
    mine, my_value = only_pre_login_cookie(browser)
    other = Browser(broker)
    other.begin()
    theirs, their_value = only_pre_login_cookie(other)
    before = store.count()

    # The other start's cookie as it is, and moved under this start's name.
    as_set = carrying(broker, {theirs: their_value})
    moved = carrying(broker, {mine: their_value})
    for attacker in (as_set, moved):
        refused = attacker.get(callback)
        assert_refused(refused)

    assert store.count() == before  # nothing spent, no session
    assert aws.recorder.requests() == []
    # The login still finishes in the browser that began it.
    assert my_value == pre_login_cookies(browser.http.cookies)[mine]
    done = browser.get(callback)
    assert done.status_code == 302 and COOKIE in set_cookies(done)


def tampered(value: str) -> str:
    middle = len(value) // 2
    flipped = "A" if value[middle] != "A" else "B"
    return value[:middle] + flipped + value[middle + 1 :]


def test_a_tampered_cookie_is_refused_with_the_stale_sign_in_page(
    broker: LiveServer,
    store: Counted,
    oidc_provider: DevIdentityProvider,
    aws: Any,
) -> None:
    browser, callback = authorized(broker, oidc_provider)
    name, value = only_pre_login_cookie(browser)
    before = store.count()

    browser.http.cookies.set(name, tampered(value), domain="127.0.0.1", path="/")
    as_api = browser.get(callback)
    assert_refused(as_api)
    as_page = browser.get(callback, headers={"Accept": BROWSER_ACCEPT})
    assert as_page.status_code == 400
    assert as_page.headers["Content-Type"] == "text/html; charset=utf-8"
    page = PageReader(as_page.text)
    assert page.text("heading") == "This sign-in link is stale or already used"
    assert_no_session_cookie(as_page)
    assert store.count() == before
    assert aws.recorder.requests() == []

    # Nothing was spent: with its own cookie back, the login finishes.
    browser.http.cookies.set(name, value, domain="127.0.0.1", path="/")
    assert browser.get(callback).status_code == 302


def test_an_answer_after_the_cookie_expired_is_the_expired_page(
    broker: LiveServer, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> None:
    browser, callback = authorized(broker, oidc_provider)
    clock.advance(601)
    browser.http.cookies.clear()  # what the browser does after Max-Age=600
    late = browser.get(callback, headers={"Accept": BROWSER_ACCEPT})
    assert late.status_code == 400
    assert PageReader(late.text).text("heading") == "This sign-in expired"


# -- several logins in one browser -------------------------------------------------------


def test_logins_started_at_once_in_two_tabs_both_finish(
    broker: LiveServer, oidc_provider: DevIdentityProvider
) -> None:
    """Both starts leave with the same (empty) cookie jar, as two tabs restored at once."""
    browser = Browser(broker)
    first = Browser(broker)
    second = Browser(broker)
    first_url = first.begin()
    second_url = second.begin()
    for tab in (first, second):
        for name, value in pre_login_cookies(tab.http.cookies).items():
            browser.http.cookies.set(name, value, domain="127.0.0.1", path="/")
    assert len(pre_login_cookies(browser.http.cookies)) == 2

    for url in (second_url, first_url):
        done = browser.get(browser.authorize(oidc_provider, url))
        assert done.status_code == 302 and COOKIE in set_cookies(done)
    assert pre_login_cookies(browser.http.cookies) == {}


def test_a_browser_keeps_a_bounded_number_of_logins_in_flight(
    broker: LiveServer, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> None:
    browser = Browser(broker)
    started: list[str] = []
    for _ in range(MAX_LOGINS_IN_FLIGHT + 2):
        started.append(browser.begin())
        clock.advance(1)
    assert len(pre_login_cookies(browser.http.cookies)) == MAX_LOGINS_IN_FLIGHT

    # The oldest two were dropped; the newest finish.
    for dropped in started[:2]:
        refused = browser.get(browser.authorize(oidc_provider, dropped))
        assert_problem(refused, 400, "invalid_request")
    for kept in started[2:]:
        done = browser.get(browser.authorize(oidc_provider, kept))
        assert done.status_code == 302 and COOKIE in set_cookies(done)


def test_a_pre_login_cookie_stays_under_the_browsers_limit(
    broker: LiveServer, oidc_provider: DevIdentityProvider
) -> None:
    longest = SPA_HOME + "x" * (MAX_RETURN_TO - len(SPA_HOME))
    browser = Browser(broker)
    challenge = s256(secrets.token_urlsafe(48))
    begun = start(browser, "corp", return_to=longest)
    native = start(browser, "okta", return_to=f"{NATIVE}/done", code_challenge=challenge)
    for response in (begun, native):
        [header] = [v for k, v in set_cookies(response).items() if is_pre_login(k)]
        name_and_value = header.split(";", 1)[0]
        assert len(name_and_value) < 1400
        flags = {part.strip().lower() for part in header.split(";")[1:]}
        assert {"secure", "httponly", "samesite=none", "path=/", "max-age=600"} <= flags
        assert name_and_value.startswith(f"{PRE_LOGIN_COOKIE}_")

    # One character longer is not kept: the login comes back to the default instead.
    too_long = longest + "y"
    done = browser.login(oidc_provider, return_to=too_long)
    assert done.status_code == 302 and done.headers["Location"] == SPA_HOME
