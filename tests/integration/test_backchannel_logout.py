"""OpenID Connect Back-Channel Logout 1.0 at ``POST /v1/backchannel-logout/{provider}``.

With the certified OP (panva's ``oidc-provider`` under Node, back-channel logout enabled) a
person signs in through a live broker, then signs out at the OP itself: the OP posts its
logout token to the broker over loopback, and the broker session ends (the next
``/v1/credentials`` is 401). With ``backchannel_logout_session_required`` the token names the
OP session (``sid``) and only the broker sessions of that OP session end; without it, it
names the user (``sub``) and every session of the user ends.

Logout tokens the certified OP would never send (forged, foreign, replayed, carrying a
nonce, without the event) are signed with the local Python IdP's keys, against a broker
whose sessions came from that IdP's id tokens; each refusal is a 400 problem and ends
nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from identity.session_admin import list_user
from identity.sessions import SessionRecord
from service.demo.dev_idp import DevIdentityProvider
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.fixtures.certified_op import (
    SPA,
    SPA_HOME,
    CertifiedOp,
    OpClient,
    op_broker_config,
    op_provider,
    query_of,
)
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.oidc_provider import ALICE_SUB, TEST_CLIENT_ID

COOKIE = "chime_broker_session"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
PROBLEM = "application/problem+json"


# -- through the certified OP ------------------------------------------------------------------


class Browser:
    """One person's browser: cookies of the broker and of the OP (both on 127.0.0.1)."""

    def __init__(self, server: LiveServer, op: CertifiedOp) -> None:
        self.server = server
        self.op = op
        self.http = LoopbackSession()

    def sign_in(self, login: str) -> None:
        begin = self.http.get(f"{self.server.url}/v1/login/corp", allow_redirects=False, timeout=10)
        assert begin.status_code == 302, begin.text
        callback = self.op.sign_in(self.http, begin.headers["Location"], login)
        done = self.http.get(callback, allow_redirects=False, timeout=10)
        assert done.status_code == 302 and done.headers["Location"] == SPA_HOME, done.text

    def api(self, method: str, path: str) -> requests.Response:
        return self.http.request(
            method, f"{self.server.url}{path}", headers={"Origin": SPA}, timeout=10
        )

    def credentials(self) -> requests.Response:
        return self.api("POST", "/v1/credentials")

    def session_record(self) -> SessionRecord:
        record = self.server.app.extensions["chime_broker"].broker.sessions.find(
            self.http.cookies.get(COOKIE)
        )
        assert record is not None
        return record  # type: ignore[no-any-return]

    def sign_out_at_op(self, url: str | None = None) -> requests.Response:
        """Open the OP's sign-out page (``url``, else its end_session_endpoint) and confirm
        it, as the person would; the OP's answer to the confirmation."""
        page = self.http.get(url or self.op.discovery()["end_session_endpoint"], timeout=10)
        assert page.status_code == 200, page.text
        action = re.search(r'action="([^"]+)"', page.text)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
        assert action is not None and xsrf is not None, page.text
        return self.http.post(
            urljoin(page.url, action.group(1)),
            data={"xsrf": xsrf.group(1), "logout": "yes"},
            allow_redirects=False,
            timeout=10,
        )


@dataclass
class LogoutRig:
    server: LiveServer
    op: CertifiedOp
    client: OpClient

    def browser(self) -> Browser:
        return Browser(self.server, self.op)


StartRig = Callable[..., LogoutRig]


@pytest.fixture
def logout_rig(
    certified_op: CertifiedOp,
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    clock: FakeClock,
) -> StartRig:
    """``logout_rig(session_required=...)``: a live broker whose ``corp`` provider is a
    client of the certified OP registered with the broker's back-channel logout URI."""

    def start(*, session_required: bool) -> LogoutRig:
        registered: list[OpClient] = []

        def config(url: str) -> Any:
            client = certified_op.register_client(
                redirect_uris=[f"{url}/v1/callback/corp"],
                backchannel_logout_uri=f"{url}/v1/backchannel-logout/corp",
                backchannel_logout_session_required=session_required,
                post_logout_redirect_uris=[SPA_HOME],
            )
            registered.append(client)
            corp = op_provider(certified_op, "corp", client, map={"user_id": "corp-{sub}"})
            return op_broker_config(make_config, url, [corp])

        server = live_broker(config, clock=clock)
        return LogoutRig(server, certified_op, registered[0])

    return start


def test_signing_out_at_the_op_ends_the_broker_session_of_that_op_session(
    logout_rig: StartRig, aws: Any
) -> None:
    rig = logout_rig(session_required=True)
    laptop, phone = rig.browser(), rig.browser()
    laptop.sign_in("alice")
    phone.sign_in("alice")
    # The id token carried the OP session's sid (session_required), one per browser.
    laptop_sid = laptop.session_record().upstream_session_id
    assert laptop_sid and laptop_sid != phone.session_record().upstream_session_id
    assert laptop.credentials().status_code == 200
    assert phone.credentials().status_code == 200

    signed_out = laptop.sign_out_at_op()
    assert signed_out.status_code == 303, signed_out.text

    # The OP posted the logout token before answering: the laptop's broker session is over.
    aws.recorder.reset()
    refused = laptop.credentials()
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    assert "credentials" not in refused.json()
    assert aws.recorder.requests() == []
    assert laptop.api("GET", "/v1/session").status_code == 401
    # The phone's OP session goes on, and so does its broker session.
    assert phone.credentials().status_code == 200
    assert phone.api("GET", "/v1/session").status_code == 200


def test_a_logout_naming_only_the_user_ends_every_session_of_the_user(
    logout_rig: StartRig, aws: Any
) -> None:
    rig = logout_rig(session_required=False)
    laptop, phone, bob = rig.browser(), rig.browser(), rig.browser()
    laptop.sign_in("alice")
    phone.sign_in("alice")
    bob.sign_in("bob")
    assert laptop.session_record().upstream_session_id is None
    broker = rig.server.app.extensions["chime_broker"].broker
    assert list_user(broker, "corp-alice", "corp")["count"] == 2

    assert laptop.sign_out_at_op().status_code == 303

    aws.recorder.reset()
    for browser in (laptop, phone):
        refused = browser.credentials()
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthenticated"
    assert aws.recorder.requests() == []
    assert list_user(broker, "corp-alice", "corp")["count"] == 0
    assert bob.credentials().status_code == 200


def test_signing_out_through_the_broker_comes_back_to_the_app(logout_rig: StartRig) -> None:
    rig = logout_rig(session_required=True)
    browser = rig.browser()
    browser.sign_in("alice")
    logout = browser.api("POST", "/v1/logout")
    assert logout.status_code == 200
    end_session_url = logout.json()["end_session_url"]
    assert query_of(end_session_url)["post_logout_redirect_uri"] == SPA_HOME

    # "Also sign out at the identity provider": the OP ends its session (and posts a
    # logout token for a broker session that has already ended), then sends the person
    # back to the app.
    done = browser.sign_out_at_op(end_session_url)
    assert done.status_code == 303
    assert done.headers["Location"].startswith(SPA_HOME)
    assert browser.credentials().status_code == 401


# -- tokens the certified OP would never send (local Python IdP) ------------------------------


class LocalRig:
    """A broker whose ``corp`` provider is the local IdP; sessions from its id tokens."""

    def __init__(self, client: FlaskClient, idp: DevIdentityProvider) -> None:
        self.client = client
        self.idp = idp

    def start_session(self, sub: str = ALICE_SUB, *, sid: str | None = "op-session-1") -> str:
        claims: dict[str, Any] = {"sub": sub, **({"sid": sid} if sid else {})}
        id_token = self.idp.mint_id_token(claims, lifetime=3600)
        answer = self.client.post("/v1/token", json={"provider": "corp", "id_token": id_token})
        assert answer.status_code == 200, answer.get_json()
        token: str = answer.get_json()["broker_session"]["token"]
        return token

    def alive(self, session: str) -> bool:
        answer = self.client.post("/v1/credentials", headers={"Authorization": f"Bearer {session}"})
        assert answer.status_code in (200, 401), answer.get_json()
        return answer.status_code == 200

    def logout_token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        omit: Iterable[str] = (),
        **mint: Any,
    ) -> str:
        """A logout token as the IdP would sign it: ``sub`` alice, ``sid`` op-session-1,
        the back-channel event, a fresh ``jti``; ``claims`` and ``mint`` change it."""
        base: dict[str, Any] = {
            "sub": ALICE_SUB,
            "sid": "op-session-1",
            "events": {LOGOUT_EVENT: {}},
            "jti": uuid.uuid4().hex,
        }
        return self.idp.mint_id_token(
            {**base, **(claims or {})},
            headers={"typ": "logout+jwt"},
            omit=("name", "email", "email_verified", "groups", *omit),
            **mint,
        )

    def post(self, logout_token: str, provider: str = "corp") -> Any:
        return self.client.post(
            f"/v1/backchannel-logout/{provider}", data={"logout_token": logout_token}
        )


@pytest.fixture
def local_rig(
    make_app: MakeApp, aws: Any, oidc_provider: DevIdentityProvider, clock: FakeClock
) -> LocalRig:
    app = make_app(
        service__session_lifetime="1h",
        providers=[
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": oidc_provider.issuer,
                "client_id": TEST_CLIENT_ID,
                "exchange": "sts",
                "map": {"user_id": "corp-{sub}"},
            },
            {"name": "guests", "kind": "guest", "exchange": "sts", "allow_open_guests": True},
        ],
        clock=clock,
    )
    return LocalRig(app.test_client(), oidc_provider)


def test_a_logout_token_with_a_sid_ends_only_the_sessions_of_that_sid(local_rig: LocalRig) -> None:
    first = local_rig.start_session(sid="op-session-1")
    other = local_rig.start_session(sid="op-session-2")
    answer = local_rig.post(local_rig.logout_token({"sid": "op-session-1"}))
    assert answer.status_code == 200, answer.get_json()
    assert answer.data == b""
    assert answer.headers["Cache-Control"] == "no-store"
    assert not local_rig.alive(first)
    assert local_rig.alive(other)


def test_a_logout_token_without_exp_or_sid_ends_every_session_of_the_subject(
    local_rig: LocalRig,
) -> None:
    sessions = [local_rig.start_session(sid=None), local_rig.start_session(sid="op-session-9")]
    bob = local_rig.start_session("bob-sub", sid=None)
    answer = local_rig.post(local_rig.logout_token(omit=("sid", "exp")))
    assert answer.status_code == 200, answer.get_json()
    assert [local_rig.alive(s) for s in sessions] == [False, False]
    assert local_rig.alive(bob)


def test_a_logout_token_for_nobody_signed_in_here_is_accepted(local_rig: LocalRig) -> None:
    answer = local_rig.post(local_rig.logout_token({"sub": "stranger", "sid": "unknown"}))
    assert answer.status_code == 200


def _wrong_key(rig: LocalRig) -> str:
    # Signed with another RSA key under the IdP's own kid.
    return rig.logout_token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _wrong_issuer(rig: LocalRig) -> str:
    return rig.logout_token({"iss": "https://idp.elsewhere.example"})


def _wrong_audience(rig: LocalRig) -> str:
    return rig.logout_token(audience="another-client")


def _nonce(rig: LocalRig) -> str:
    return rig.logout_token({"nonce": "n-0S6_WzA2Mj"})


def _no_events(rig: LocalRig) -> str:
    return rig.logout_token(omit=("events",))


def _another_event(rig: LocalRig) -> str:
    return rig.logout_token({"events": {"http://schemas.openid.net/event/other": {}}})


def _event_not_an_object(rig: LocalRig) -> str:
    return rig.logout_token({"events": {LOGOUT_EVENT: "yes"}})


def _neither_sub_nor_sid(rig: LocalRig) -> str:
    return rig.logout_token(omit=("sub", "sid"))


def _no_jti(rig: LocalRig) -> str:
    return rig.logout_token(omit=("jti",))


def _no_iat(rig: LocalRig) -> str:
    return rig.logout_token(omit=("iat",))


def _issued_in_the_future(rig: LocalRig) -> str:
    return rig.logout_token({"iat": 4_000_000_000})


def _an_id_token(rig: LocalRig) -> str:
    return rig.idp.mint_id_token({"sub": ALICE_SUB, "sid": "op-session-1"})


@pytest.mark.parametrize(
    "forge",
    [
        _wrong_key,
        _wrong_issuer,
        _wrong_audience,
        _nonce,
        _no_events,
        _another_event,
        _event_not_an_object,
        _neither_sub_nor_sid,
        _no_jti,
        _no_iat,
        _issued_in_the_future,
        _an_id_token,
    ],
)
def test_a_refused_logout_token_is_a_400_and_ends_nothing(
    forge: Callable[[LocalRig], str], local_rig: LocalRig, aws: Any
) -> None:
    session = local_rig.start_session()
    aws.recorder.reset()
    answer = local_rig.post(forge(local_rig))
    assert answer.status_code == 400, answer.get_json()
    assert answer.headers["Content-Type"].startswith(PROBLEM)
    assert answer.get_json()["code"] == "invalid_logout_token"
    assert aws.recorder.requests() == []
    assert local_rig.alive(session)


def test_a_replayed_logout_token_is_refused_and_ends_nothing(
    local_rig: LocalRig, clock: FakeClock
) -> None:
    local_rig.start_session()
    token = local_rig.logout_token()
    assert local_rig.post(token).status_code == 200
    # Signed in again in the same IdP session: the old token must not end the new session.
    clock.advance(1)
    session = local_rig.start_session()
    replayed = local_rig.post(token)
    assert replayed.status_code == 400
    assert replayed.get_json()["code"] == "invalid_logout_token"
    assert local_rig.alive(session)


@pytest.mark.parametrize(
    ("provider", "body", "content_type", "status", "code"),
    [
        ("guests", None, None, 400, "invalid_request"),
        ("nobody", None, None, 404, "unknown_provider"),
        ("corp", {"state": "af0ifjsldkj"}, None, 400, "invalid_request"),
        ("corp", None, "application/json", 415, "unsupported_media_type"),
    ],
    ids=["guest-provider", "unknown-provider", "no-token", "json-body"],
)
def test_requests_that_are_not_a_logout_form_are_refused(
    local_rig: LocalRig,
    provider: str,
    body: dict[str, str] | None,
    content_type: str | None,
    status: int,
    code: str,
) -> None:
    session = local_rig.start_session()
    token = local_rig.logout_token()
    if content_type is not None:
        answer = local_rig.client.post(
            f"/v1/backchannel-logout/{provider}",
            json={"logout_token": token},
        )
    else:
        answer = local_rig.client.post(
            f"/v1/backchannel-logout/{provider}",
            data=body if body is not None else {"logout_token": token},
        )
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["code"] == code
    assert local_rig.alive(session)
