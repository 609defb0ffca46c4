"""A logout that lands while a refresh is re-checking the session with the IdP sticks.

A live broker over the local OIDC provider and the moto server; the sign-in asks for
``offline_access``, so the session holds a refresh token and, once
``service.recheck_interval`` has passed, the next ``POST /v1/credentials`` refreshes it at
the IdP's token endpoint. A gate in front of that endpoint holds the refresh there until
the logout has answered: the refresh must then answer 401 without credentials or any
AWS call, and the session must stay ended, on a broker alone (memory) and on two brokers
sharing a Redis store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests

from identity.config.document import BrokerConfig
from identity.sealing import token_hash
from identity.session_admin import revoke_provider
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.integration import test_browser_login as browser_login

# Past the default service.recheck_interval (15 minutes).
RECHECK_DUE = 16 * 60
GATE_TIMEOUT = 30.0


class TokenEndpointGate:
    """WSGI middleware on the IdP: while armed, a ``POST /token`` waits at the gate until
    the test opens it, after telling the test that it arrived."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self.armed = False
        self.arrived = threading.Event()
        self.opened = threading.Event()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if self.armed and environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/token":
            self.arrived.set()
            if not self.opened.wait(GATE_TIMEOUT):
                raise RuntimeError("the test never opened the token endpoint's gate")
        return self._app(environ, start_response)


@pytest.fixture
def gate(oidc_provider: DevIdentityProvider) -> TokenEndpointGate:
    wrapped = TokenEndpointGate(oidc_provider.app.wsgi_app)
    oidc_provider.app.wsgi_app = wrapped  # type: ignore[method-assign]
    return wrapped


@pytest.fixture(params=["memory", "redis"])
def brokers(
    request: pytest.FixtureRequest,
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
    config_for: Callable[..., BrokerConfig],
) -> tuple[LiveServer, LiveServer]:
    """The broker a client refreshes at and the one it logs out at: the same broker with
    a memory store, two brokers sharing a Redis store."""
    if request.param == "memory":
        one = live_broker(lambda url: config_for(url, {"okta": oidc_provider}), clock=clock)
        return one, one
    store = request.getfixturevalue("redis_url")

    def start() -> LiveServer:
        return live_broker(
            lambda url: config_for(url, {"okta": oidc_provider}, store=store),
            clock=clock,
        )

    # Built last, the first broker's callback is the one the IdP's client knows.
    elsewhere = start()
    return start(), elsewhere


config_for = browser_login.config_for


class Race:
    """The two brokers, the gate at the IdP's token endpoint, and a thread for the refresh."""

    def __init__(
        self,
        brokers: tuple[LiveServer, LiveServer],
        gate: TokenEndpointGate,
        pool: ThreadPoolExecutor,
        clock: FakeClock,
        aws: Any,
    ) -> None:
        self.at, self.elsewhere = brokers
        self.gate = gate
        self.pool = pool
        self.clock = clock
        self.aws = aws

    def refresh_during(
        self, refresh: Callable[[], requests.Response], end: Callable[[], None]
    ) -> None:
        """Let the recheck come due, start ``refresh``, hold it at the IdP's token
        endpoint, ``end`` the session meanwhile, then let the refresh finish: it is
        refused, without credentials or any AWS call."""
        self.clock.advance(RECHECK_DUE)
        self.aws.recorder.reset()
        self.gate.armed = True
        pending: Future[requests.Response] = self.pool.submit(refresh)
        assert self.gate.arrived.wait(GATE_TIMEOUT), "the refresh never reached the IdP"
        try:
            end()
        finally:
            self.gate.opened.set()
        self.assert_ended(pending.result(timeout=GATE_TIMEOUT))

    def assert_ended(self, *responses: requests.Response) -> None:
        for response in responses:
            browser_login.assert_problem(response, 401, "unauthenticated")
            assert "credentials" not in response.json()
        assert self.aws.recorder.requests() == []


@pytest.fixture
def race(
    brokers: tuple[LiveServer, LiveServer],
    gate: TokenEndpointGate,
    clock: FakeClock,
    aws: Any,
) -> Iterator[Race]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield Race(brokers, gate, pool, clock, aws)


def stored_session(broker: LiveServer, token: str) -> bytes | None:
    return broker.app.extensions["chime_broker"].store.get(  # type: ignore[no-any-return]
        "session:" + token_hash(token)
    )


def logged_out(response: requests.Response) -> None:
    assert response.status_code == 200, response.text


def test_a_browser_logout_during_a_recheck_sticks(
    race: Race, oidc_provider: DevIdentityProvider
) -> None:
    browser = browser_login.Browser(race.at)
    assert browser.login(oidc_provider).status_code == 302
    token = browser.cookie()
    assert token is not None
    assert browser.api("POST", "/v1/credentials").status_code == 200
    tokens_before = oidc_provider.token_requests

    # The logout comes from another tab of the same browser, through the other broker.
    other_tab = LoopbackSession()
    other_tab.cookies.update(browser.http.cookies)
    race.refresh_during(
        lambda: browser.api("POST", "/v1/credentials"),
        lambda: logged_out(
            other_tab.post(
                f"{race.elsewhere.url}/v1/logout",
                headers={"Origin": browser_login.SPA},
                timeout=10,
            )
        ),
    )

    assert oidc_provider.token_requests == tokens_before + 1
    assert stored_session(race.at, token) is None
    browser_login.assert_problem(browser.api("GET", "/v1/session"), 401, "unauthenticated")
    race.assert_ended(browser.api("POST", "/v1/credentials"))


def test_a_native_logout_during_a_recheck_sticks(
    race: Race, oidc_provider: DevIdentityProvider
) -> None:
    code, verifier = browser_login.native_login(browser_login.Browser(race.at), oidc_provider)
    exchanged = browser_login.exchange_code(race.at, code, verifier)
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["broker_session"]["token"]
    bearer = {"Authorization": f"Bearer {token}"}

    def post(broker: LiveServer, path: str) -> requests.Response:
        return requests.post(f"{broker.url}{path}", headers=bearer, timeout=10)

    race.refresh_during(
        lambda: post(race.at, "/v1/credentials"),
        lambda: logged_out(post(race.elsewhere, "/v1/logout")),
    )

    assert stored_session(race.at, token) is None
    race.assert_ended(post(race.at, "/v1/credentials"), post(race.elsewhere, "/v1/credentials"))


def test_a_revocation_during_a_recheck_sticks(
    race: Race, oidc_provider: DevIdentityProvider
) -> None:
    browser = browser_login.Browser(race.at)
    assert browser.login(oidc_provider).status_code == 302

    def revoke() -> None:
        # A provider-wide revocation writes only its marker; the session's record stays.
        revoke_provider(race.elsewhere.app.extensions["chime_broker"].broker, "okta")

    race.refresh_during(lambda: browser.api("POST", "/v1/credentials"), revoke)

    race.assert_ended(browser.api("POST", "/v1/credentials"))


def test_a_recheck_without_a_logout_still_rewrites_the_session(
    brokers: tuple[LiveServer, LiveServer],
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
) -> None:
    at, elsewhere = brokers
    browser = browser_login.Browser(at)
    assert browser.login(oidc_provider).status_code == 302
    token = browser.cookie()
    assert token is not None
    clock.advance(RECHECK_DUE)

    assert browser.api("POST", "/v1/credentials").status_code == 200
    record = elsewhere.app.extensions["chime_broker"].broker.sessions.find(token)
    assert record is not None and record.rechecked_at == clock.now
