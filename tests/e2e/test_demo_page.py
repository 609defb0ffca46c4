"""The demo page in headless Chromium: a person signs in at the local OIDC provider, sees
who they are, the ARN and the credentials' expiry, refreshes and signs out; the same page
as an SPA on a second origin; a login cancelled at the IdP; and ``make demo`` itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from identity.config.document import BrokerConfig, load_config
from service.demo.aws_world import APP_INSTANCE_ARN
from service.security import PAGE_CSP
from tests.e2e.pages import DemoPage, SpaServer
from tests.fixtures import apps
from tests.fixtures.apps import MakeApp
from tests.fixtures.configs import REMOVE, provider_dict
from tests.fixtures.live_server import LiveServer
from tests.fixtures.recorder import sts_tags

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COOKIE = "chime_broker_session"
SECRET_KEY = "e2e-secret-key-0123456789abcdefghijklmnop"
ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "email_verified": True}


def remaining_seconds(countdown: str) -> int:
    """``in 59:58`` or ``in 1:00:00`` as seconds."""
    match = re.fullmatch(r"in (?:(\d+):)?(\d{1,2}):(\d{2})", countdown)
    assert match, f"not a countdown: {countdown!r}"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def wait_for_countdown_to_move(page: DemoPage, shown: str) -> str:
    page.tab.wait_for_function(
        "shown => document.getElementById('expires-in').textContent !== shown", arg=shown
    )
    return page.text("expires-in")


def session_cookie(page: DemoPage, broker_url: str) -> dict[str, Any] | None:
    found = [c for c in page.tab.context.cookies(broker_url) if c["name"] == COOKIE]
    return dict(found[0]) if found else None


def broker_config(
    url: str,
    *,
    aws: Any,
    idp: Any,
    mode: str,
    origins: list[str],
    cache_credentials: bool = True,
) -> BrokerConfig:
    """A broker at ``url`` with one OIDC provider, ``corp`` ("Example Corp", the local IdP,
    client ``test-client``), vending with STS; the page at each of ``origins`` may use it
    and be returned to. ``mode: production`` has a secret key and Secure cookies."""
    return apps.broker_config(
        aws,
        mode=mode,
        service__public_url=url,
        service__secret_key=SECRET_KEY if mode == "production" else REMOVE,
        service__allowed_origins=origins,
        service__allowed_return_to=[origin + "/" for origin in origins],
        service__cache_credentials=cache_credentials,
        providers=[
            provider_dict(
                "oidc",
                name="corp",
                display_name="Example Corp",
                issuer=idp.issuer,
                client_id="test-client",
                scopes=["openid", "profile", "email"],
                exchange="sts",
                map={"user_id": "corp-{sub}", "display_name": "{name}"},
            )
        ],
    )


def broker_with_corp_login(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    idp: Any,
    *,
    origins: list[str] | None = None,
    **config: Any,
) -> LiveServer:
    """A broker whose ``corp`` provider is the local IdP, where Ada can sign in through
    the broker's callback. No ``origins``: the broker's own origin (its demo page)."""
    idp.add_user("ada", **ADA)

    def build(url: str) -> Any:
        idp.register_client("test-client", redirect_uris=(f"{url}/v1/callback/corp",))
        return broker_config(url, aws=aws, idp=idp, origins=origins or [url], **config)

    return live_broker(build)


def assert_vended_for_corp_ada(aws: Any, calls: list[dict[str, Any]]) -> None:
    """Every AssumeRole the broker sent was for Ada, tagged as Ada, and nothing else."""
    assert calls
    for call in calls:
        assert call["RoleArn"] == aws.user_role_arn
        assert call["RoleSessionName"] == "corp-ada"
        assert call["SourceIdentity"] == "corp-ada"
        assert call["DurationSeconds"] == "3600"
        assert sts_tags(call) == {aws.user_tag: "corp-ada"}


# -- journey 1: the demo page of a broker in mode: demo -----------------------------------


def test_the_full_login_credentials_refresh_logout_journey_on_the_demo_page(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = broker_with_corp_login(live_broker, aws, oidc_provider, mode="demo")
    page_url = broker.url + "/"

    demo_page.open(page_url)
    expect(demo_page.tab.locator("#signed-in")).to_be_hidden()
    assert demo_page.provider_buttons() == ["Example Corp"]

    demo_page.start_login("corp", oidc_provider.issuer)
    demo_page.sign_in_at_idp("Ada Lovelace")
    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.tab.url == page_url
    assert demo_page.text("user-id") == "corp-ada"
    assert demo_page.text("provider") == "Example Corp"
    assert demo_page.text("user-arn") == f"{aws.app_instance_arn}/user/corp-ada"
    assert demo_page.text("region") == aws.region

    expiration = datetime.fromisoformat(
        demo_page.tab.locator("#expiration").get_attribute("datetime") or ""
    )
    assert 3000 < (expiration - datetime.now(UTC)).total_seconds() <= 3600
    shown = demo_page.text("expires-in")
    later = wait_for_countdown_to_move(demo_page, shown)
    assert 3000 < remaining_seconds(later) < remaining_seconds(shown) <= 3600

    # Plain http in mode demo: the cookie is not Secure, and the page can never read it.
    cookie = session_cookie(demo_page, broker.url)
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Lax", False)
    assert COOKIE not in demo_page.tab.evaluate("document.cookie")

    # One AssumeRole, tagged with Ada's user id; refreshing within the hour reuses it.
    [vended] = aws.recorder.calls("AssumeRole")
    assert_vended_for_corp_ada(aws, [vended])
    access_key_id = demo_page.text("access-key-id")
    assert access_key_id.startswith("ASIA")
    assert demo_page.refresh().endswith("the same credentials, still valid.")
    assert demo_page.text("access-key-id") == access_key_id
    assert demo_page.text("user-arn") == f"{aws.app_instance_arn}/user/corp-ada"
    assert aws.recorder.calls("AssumeRole") == [vended]
    assert set(aws.recorder.operations()) == {"AssumeRole"}

    demo_page.logout()
    expect(demo_page.tab.locator("#signed-out-notice")).to_contain_text("You are signed out")
    expect(demo_page.tab.locator("#signed-in")).to_be_hidden()
    idp_logout = demo_page.tab.locator("#idp-logout")
    expect(idp_logout).to_be_visible()
    assert (idp_logout.get_attribute("href") or "").startswith(f"{oidc_provider.issuer}/logout")
    assert demo_page.fetch_status(f"{broker.url}/v1/session") == 401
    assert demo_page.fetch_status(f"{broker.url}/v1/credentials", "POST") == 401

    demo_page.open(page_url)
    expect(demo_page.tab.locator("#signed-out")).to_be_visible()
    expect(demo_page.tab.locator("#error")).to_be_hidden()
    assert aws.recorder.calls("AssumeRole") == [vended]
    assert demo_page.problems == []


# -- journey 2: the same page as an SPA on a second origin ---------------------------------


def test_the_same_journey_from_an_spa_served_on_a_second_origin(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: Any,
    demo_page: DemoPage,
    spa_server: Callable[[], SpaServer],
) -> None:
    # Two ports on 127.0.0.1: another origin, but the same site, as app.example.chat and
    # auth.example.chat are (the SameSite=Lax session cookie needs that).
    spa = spa_server()
    broker = broker_with_corp_login(
        live_broker,
        aws,
        oidc_provider,
        mode="production",
        origins=[spa.origin],
        cache_credentials=False,
    )
    spa.broker_url = broker.url
    assert spa.origin != broker.url

    demo_page.open(spa.url)
    assert demo_page.provider_buttons() == ["Example Corp"]
    demo_page.start_login("corp", oidc_provider.issuer)
    demo_page.sign_in_at_idp("Ada Lovelace")
    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.tab.url == spa.url
    assert demo_page.text("user-arn") == f"{aws.app_instance_arn}/user/corp-ada"
    assert remaining_seconds(demo_page.text("expires-in")) > 3000

    # Production flags, kept by Chromium on http://127.0.0.1 and sent by the SPA's fetches.
    cookie = session_cookie(demo_page, broker.url)
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"]) == (True, "Lax", True)

    # Without the credential cache every refresh is a new AssumeRole with new keys.
    before = aws.recorder.calls("AssumeRole")
    assert_vended_for_corp_ada(aws, before)
    access_key_id = demo_page.text("access-key-id")
    assert demo_page.refresh().endswith("new credentials.")
    assert demo_page.text("access-key-id") != access_key_id
    after = aws.recorder.calls("AssumeRole")
    assert len(after) == len(before) + 1
    assert_vended_for_corp_ada(aws, after)

    demo_page.logout()
    assert demo_page.fetch_status(f"{broker.url}/v1/session") == 401
    demo_page.open(spa.url)
    expect(demo_page.tab.locator("#signed-out")).to_be_visible()
    assert len(aws.recorder.calls("AssumeRole")) == len(after)
    assert demo_page.problems == []


def test_a_page_on_an_origin_the_broker_does_not_list_gets_nothing(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: Any,
    demo_page: DemoPage,
    spa_server: Callable[[], SpaServer],
) -> None:
    listed, unlisted = spa_server(), spa_server()
    broker = broker_with_corp_login(
        live_broker, aws, oidc_provider, mode="production", origins=[listed.origin]
    )
    listed.broker_url = unlisted.broker_url = broker.url
    demo_page.open(listed.url)
    demo_page.start_login("corp", oidc_provider.issuer)
    demo_page.sign_in_at_idp("Ada Lovelace")
    demo_page.signed_in_as("Ada Lovelace")
    vended = aws.recorder.calls("AssumeRole")

    # Same site, so the browser sends the session cookie; the broker must still refuse.
    demo_page.open(unlisted.url)
    expect(demo_page.tab.locator("#error")).to_be_visible()
    assert demo_page.text("error-code") == "network_error"
    expect(demo_page.tab.locator("#signed-in")).to_be_hidden()
    for method, path in (("POST", "/v1/credentials"), ("GET", "/v1/session")):
        assert demo_page.fetch_status(broker.url + path, method) == "refused: TypeError"
    assert aws.recorder.calls("AssumeRole") == vended

    demo_page.open(listed.url)
    demo_page.signed_in_as("Ada Lovelace")


# -- journey 3: the login is cancelled at the identity provider ----------------------------


def test_a_login_cancelled_at_the_idp_comes_back_to_the_spa_as_access_denied(
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: Any,
    demo_page: DemoPage,
    spa_server: Callable[[], SpaServer],
) -> None:
    spa = spa_server()
    broker = broker_with_corp_login(
        live_broker, aws, oidc_provider, mode="production", origins=[spa.origin]
    )
    spa.broker_url = broker.url

    demo_page.open(spa.url)
    demo_page.start_login("corp", oidc_provider.issuer)
    demo_page.cancel_at_idp()
    expect(demo_page.tab.locator("#error")).to_be_visible()

    assert f"{spa.url}?error=access_denied" in demo_page.navigations
    assert demo_page.text("error-title") == "Sign-in failed"
    assert demo_page.text("error-code") == "access_denied"
    assert "refused the sign-in" in demo_page.text("error-message")
    # The page shows the error once and takes it out of its URL.
    assert demo_page.tab.url == spa.url
    expect(demo_page.tab.locator("#signed-out")).to_be_visible()
    assert demo_page.provider_buttons() == ["Example Corp"]
    assert session_cookie(demo_page, broker.url) is None
    assert demo_page.fetch_status(f"{broker.url}/v1/session") == 401
    assert aws.recorder.requests() == []
    assert demo_page.problems == []


# -- where the page is served --------------------------------------------------------------


class _InlineCode(HTMLParser):
    """Collects what a CSP of ``script-src 'self'; style-src 'self'`` would refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.found.append(f"<{tag}> with inline style or handler")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")

    def handle_data(self, data: str) -> None:
        if self._tag == "script" and data.strip():
            self.found.append("inline script")


def test_the_page_is_served_only_in_demo_mode_with_the_page_csp(make_app: MakeApp) -> None:
    demo = make_app(load_config(REPO / "config" / "demo.yaml", env={})).test_client()
    page = demo.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == PAGE_CSP
    inline = _InlineCode()
    inline.feed(page.get_data(as_text=True))
    assert inline.found == []
    for name, mimetype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = demo.get(f"/static/{name}")
        assert (asset.status_code, asset.mimetype) == (200, mimetype)
        assert asset.headers["Content-Security-Policy"] == PAGE_CSP
    assert demo.get("/static/launcher.py").status_code == 404
    assert demo.get("/static/../launcher.py").status_code == 404

    production = make_app().test_client()
    for path in ("/", "/static/app.js", "/static/style.css"):
        refused = production.get(path)
        assert refused.status_code == 404
        assert refused.mimetype == "application/problem+json"
        assert refused.get_json()["code"] == "not_found"


# -- make demo -----------------------------------------------------------------------------


_BANNER_URL = re.compile(r"^  (broker|demo IdP) +(http://127\.0\.0\.1:(\d+))", re.MULTILINE)


@dataclass
class RunningDemo:
    """``chime-broker demo`` (what ``make demo`` runs) in a child process."""

    url: str
    idp: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """The demo on ports the system picks (``--port 0 --idp-port 0``): the printed
    walkthrough names the ports actually bound, and the fixture reads them from it."""
    workdir = tmp_path_factory.mktemp("demo")
    log = workdir / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "service.cli", "demo", "--port", "0", "--idp-port", "0"]
    with log.open("w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if child.poll() is not None:
                pytest.fail(f"chime-broker demo exited:\n{log.read_text()}")
            urls = {m[1]: (m[2], m[3]) for m in _BANNER_URL.finditer(log.read_text())}
            if len(urls) == 2:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"chime-broker demo did not start:\n{log.read_text()}")
            time.sleep(0.1)
        (url, port), (idp, idp_port) = urls["broker"], urls["demo IdP"]
        assert "0" not in (port, idp_port)
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        yield RunningDemo(url=url, idp=idp, log=log)
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def test_make_demo_walks_a_person_through_a_browser_login(
    running_demo: RunningDemo, demo_page: DemoPage
) -> None:
    base, arn = running_demo.url, f"{APP_INSTANCE_ARN}/user/demo-ada"
    printed = running_demo.output()
    for step in (f"Open {base}/", 'Click "Demo IdP"', 'Pick "Ada Lovelace"', arn):
        assert step in printed

    demo_page.open(base + "/")
    assert demo_page.provider_buttons() == ["Demo IdP"]
    demo_page.start_login("demo", running_demo.idp)
    demo_page.sign_in_at_idp("Ada Lovelace")
    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.text("user-arn") == arn
    assert demo_page.text("user-id") == "demo-ada"
    # The in-process Cognito issues 90-second credentials.
    assert 0 < remaining_seconds(demo_page.text("expires-in")) <= 90

    demo_page.refresh()
    assert demo_page.text("user-arn") == arn
    demo_page.logout()
    assert demo_page.fetch_status(f"{base}/v1/session") == 401
    # "Also sign out at the identity provider" ends at the demo page again.
    demo_page.tab.locator("#idp-logout").click()
    demo_page.tab.wait_for_url(base + "/")
    demo_page.wait_until_settled()
    expect(demo_page.tab.locator("#signed-out")).to_be_visible()
    assert demo_page.problems == []


def test_make_demo_prints_a_mobile_token_exchange_that_works(running_demo: RunningDemo) -> None:
    base, idp = running_demo.url, running_demo.idp
    printed = running_demo.output()
    assert f"curl -s -X POST {idp}/dev/id-token -d sub=ada -d client_id=demo-mobile" in printed
    assert f"curl -s -X POST {base}/v1/token -H 'Content-Type: application/json'" in printed
    assert '-d "{\\"provider\\": \\"demo\\", \\"id_token\\": \\"$ID_TOKEN\\"}"' in printed

    minted = requests.post(
        f"{idp}/dev/id-token", data={"sub": "ada", "client_id": "demo-mobile"}, timeout=10
    )
    assert minted.status_code == 200
    exchanged = requests.post(
        f"{base}/v1/token",
        json={"provider": "demo", "id_token": minted.json()["id_token"]},
        timeout=10,
    )
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["display_name"] == "Ada Lovelace"
    assert body["app_instance_user_arn"] == f"{APP_INSTANCE_ARN}/user/demo-ada"

    bearer = {"Authorization": f"Bearer {body['broker_session']['token']}"}
    refreshed = requests.post(f"{base}/v1/credentials", headers=bearer, timeout=10)
    assert refreshed.status_code == 200
    assert refreshed.json()["app_instance_user_arn"] == body["app_instance_user_arn"]
    assert requests.post(f"{base}/v1/logout", headers=bearer, timeout=10).status_code == 200
    assert requests.post(f"{base}/v1/credentials", headers=bearer, timeout=10).status_code == 401
