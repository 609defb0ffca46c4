"""``chime-broker login --no-browser`` end to end in Chromium: the command prints the login
URL, the browser opens it, alice signs in at the development IdP, and the broker sends the
browser to the command's loopback listener, which exchanges the code for a session."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from identity.config.document import BrokerConfig
from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.apps import MakeConfig
from tests.fixtures.live_server import LiveServer

CLIENT_ID = "broker-native"
CLIENT_SECRET = "broker-native-secret"
EXECUTABLE = str(Path(sys.executable).parent / "chime-broker")


@pytest.mark.slow
def test_login_without_a_browser_of_its_own_finishes_in_chromium(
    page: Page,
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    aws: Any,
    oidc_provider: DevIdentityProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def build(url: str) -> BrokerConfig:
        oidc_provider.register_client(
            CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{url}/v1/callback/okta"]
        )
        return make_config(
            service__public_url=url,
            service__allowed_return_to=["https://app.example.chat/", "http://127.0.0.1/"],
            providers=[
                {
                    "name": "okta",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "exchange": "sts",
                    "map": {"user_id": "okta-{sub}"},
                }
            ],
        )

    broker = live_broker(build)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    command = subprocess.Popen(
        [EXECUTABLE, "login", "--broker", broker.url, "--provider", "okta", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert command.stderr is not None
        url = ""
        while not url.startswith("http"):
            line = command.stderr.readline()
            assert line, "login printed no URL"
            url = line.strip()

        page.goto(url)
        page.wait_for_url(f"{oidc_provider.issuer}/authorize?*")
        page.get_by_label("Alice Example").check()
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("http://127.0.0.1:*/?code=*")
        expect(page.locator("body")).to_contain_text("Signed in")
        _, err = command.communicate(timeout=30)
    finally:
        command.kill()
        command.wait()
    assert command.returncode == 0, err

    [stored] = (tmp_path / "chime-broker").glob("session-*.json")
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    session = json.loads(stored.read_text())
    assert session["broker"] == broker.url and session["provider"] == "okta"

    printed = subprocess.run(
        [EXECUTABLE, "credential-process", "--broker", broker.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["Version"] == 1
