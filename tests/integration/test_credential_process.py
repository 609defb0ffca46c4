"""``chime-broker login`` and ``chime-broker credential-process`` against a live broker
(Werkzeug thread), the local OIDC provider and the moto server; the commands run as the
installed ``chime-broker`` executable, credential-process through boto3's
``credential_process`` profile setting."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import CredentialRetrievalError

from identity.config.document import BrokerConfig
from service.cli.login import session_path, write_private
from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.apps import MakeConfig
from tests.fixtures.live_server import LiveServer, LoopbackSession
from tests.fixtures.oidc_provider import ALICE_SUB

CLIENT_ID = "broker-native"
CLIENT_SECRET = "broker-native-secret"
SPA_HOME = "https://app.example.chat/app/"
EXECUTABLE = str(Path(sys.executable).parent / "chime-broker")
PROFILE = "chat"


@pytest.fixture
def broker(
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    aws: Any,
    oidc_provider: DevIdentityProvider,
) -> LiveServer:
    def build(url: str) -> BrokerConfig:
        oidc_provider.register_client(
            CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uris=[f"{url}/v1/callback/okta", f"{url}/v1/callback/admins"],
        )
        oidc_provider.register_client("mobile-app")
        return make_config(
            aws__sts__duration_seconds=3600,
            service__public_url=url,
            service__session_lifetime="2h",
            service__cache_credentials=False,
            service__allowed_return_to=[SPA_HOME, "http://127.0.0.1/"],
            service__default_return_to=SPA_HOME,
            providers=[
                {
                    "name": "okta",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "exchange": "sts",
                    "map": {"user_id": "okta-{sub}"},
                },
                {
                    "name": "corp",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": "mobile-app",
                    "exchange": "sts",
                    "map": {"user_id": "corp-{sub}"},
                },
                {
                    "name": "admins",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "exchange": "sts",
                    "map": {"user_id": "admin-{sub}", "require": {"groups": "admins"}},
                },
            ],
        )

    return live_broker(build)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The ``chime-broker`` directory under a fresh ``$XDG_CONFIG_HOME``; no session in the
    environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("CHIME_BROKER_SESSION", raising=False)
    yield tmp_path / "config" / "chime-broker"


def bearer_session(broker: LiveServer, idp: DevIdentityProvider) -> dict[str, Any]:
    """A broker session from ``POST /v1/token`` with an id token of the local IdP."""
    token = idp.mint_id_token({"sub": ALICE_SUB}, audience="mobile-app")
    response = requests.post(
        f"{broker.url}/v1/token", json={"provider": "corp", "id_token": token}, timeout=10
    )
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()["broker_session"]
    return session


def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *arguments: str) -> None:
    config = tmp_path / "aws-config"
    command = " ".join([EXECUTABLE, "credential-process", *arguments])
    config.write_text(f"[profile {PROFILE}]\ncredential_process = {command}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


def boto_credentials() -> Any:
    found = boto3.Session(profile_name=PROFILE).get_credentials()
    assert found is not None
    return found.get_frozen_credentials()


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXECUTABLE, *arguments], capture_output=True, text=True, timeout=60, check=False
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cache_file(home: Path) -> Path:
    found = list(home.glob("credentials-*.json"))
    assert len(found) == 1, found
    return found[0]


def age_cache(path: Path, remaining: timedelta) -> None:
    cached = json.loads(path.read_text())
    expiration = datetime.now(UTC) + remaining
    cached["Expiration"] = expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps(cached))


@pytest.mark.slow
def test_boto3_gets_cached_and_refreshed_credentials_from_a_bearer_session(
    broker: LiveServer,
    oidc_provider: DevIdentityProvider,
    aws: Any,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = bearer_session(broker, oidc_provider)
    monkeypatch.setenv("CHIME_BROKER_SESSION", session["token"])
    profile(tmp_path, monkeypatch, "--broker", broker.url)
    aws.recorder.reset()

    first = boto_credentials()
    assert first.access_key and first.secret_key and first.token
    assert aws.recorder.operations() == ["AssumeRole"]
    cached = cache_file(home)
    assert mode(cached) == 0o600 and mode(home) == 0o700
    stored = json.loads(cached.read_text())
    assert stored["AccessKeyId"] == first.access_key
    assert stored["Version"] == 1
    before = (cached.read_bytes(), cached.stat().st_mtime_ns)

    # A second process reuses the cache: nothing reaches the broker's AWS side.
    second = boto_credentials()
    assert second.access_key == first.access_key
    assert aws.recorder.operations() == ["AssumeRole"]
    assert (cached.read_bytes(), cached.stat().st_mtime_ns) == before

    # Less than 15 minutes left: new credentials from the broker.
    age_cache(cached, timedelta(minutes=14))
    third = boto_credentials()
    assert aws.recorder.operations() == ["AssumeRole", "AssumeRole"]
    assert json.loads(cached.read_text())["AccessKeyId"] == third.access_key
    assert mode(cached) == 0o600
    assert third.access_key != first.access_key


@pytest.mark.slow
def test_an_ended_session_fails_with_one_line_and_boto3_raises(
    broker: LiveServer,
    oidc_provider: DevIdentityProvider,
    aws: Any,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = bearer_session(broker, oidc_provider)
    stored = session_path(broker.url, "corp")
    write_private(
        stored,
        {"broker": broker.url, "provider": "corp", "token": session["token"], "expires_at": None},
    )
    profile(tmp_path, monkeypatch, "--broker", broker.url, "--provider", "corp")
    assert boto_credentials().access_key

    out = requests.post(
        f"{broker.url}/v1/logout",
        headers={"Authorization": f"Bearer {session['token']}"},
        timeout=10,
    )
    assert out.status_code == 200, out.text
    age_cache(cache_file(home), timedelta(minutes=5))

    done = run("credential-process", "--broker", broker.url, "--provider", "corp")
    assert done.returncode == 1
    assert done.stdout == ""
    expected = f"run chime-broker login --broker {broker.url} --provider corp"
    assert done.stderr.strip().endswith(expected)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert list(home.glob("credentials-*.json")) == []

    with pytest.raises(CredentialRetrievalError):
        boto_credentials()


@pytest.mark.slow
def test_no_session_and_an_unreachable_broker_fail_with_one_line(
    home: Path, closed_port: int
) -> None:
    broker = f"http://127.0.0.1:{closed_port}"
    missing = run("credential-process", "--broker", broker, "--provider", "okta")
    assert missing.returncode == 1
    assert missing.stderr == (
        f"chime-broker credential-process: run chime-broker login --broker {broker} "
        "--provider okta\n"
    )

    env = {**os.environ, "CHIME_BROKER_SESSION": "some-token"}
    unreachable = subprocess.run(
        [EXECUTABLE, "credential-process", "--broker", broker],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.count("\n") == 1 and "Traceback" not in unreachable.stderr
    assert "could not reach" in unreachable.stderr


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def start_login(broker: LiveServer, provider: str) -> tuple[subprocess.Popen[str], str]:
    """``chime-broker login --no-browser`` running; the login URL it printed."""
    command = subprocess.Popen(
        [EXECUTABLE, "login", "--broker", broker.url, "--provider", provider, "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert command.stderr is not None
    url = ""
    while not url.startswith("http"):
        line = command.stderr.readline()
        if not line:
            command.kill()
            command.wait()
            pytest.fail("login printed no URL")
        url = line.strip()
    return command, url


@pytest.mark.slow
def test_login_over_the_loopback_redirect_stores_a_session_for_credential_process(
    broker: LiveServer,
    oidc_provider: DevIdentityProvider,
    aws: Any,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command, url = start_login(broker, "okta")
    try:
        sent = query(url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", sent["return_to"])
        assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43

        # A browser: the broker, the IdP (alice signs in), the broker's callback, the
        # loopback listener.
        browser = LoopbackSession()
        oidc_provider.next_login(ALICE_SUB)
        response = browser.get(url, allow_redirects=True, timeout=10)
        assert response.status_code == 200, response.text
        assert response.url.startswith(sent["return_to"] + "?code=")
        assert "Signed in" in response.text
        _, err = command.communicate(timeout=30)
    finally:
        command.kill()
        command.wait()
    assert command.returncode == 0, err

    sessions = list(home.glob("session-*.json"))
    assert len(sessions) == 1 and mode(sessions[0]) == 0o600
    stored = json.loads(sessions[0].read_text())
    assert stored["broker"] == broker.url and stored["provider"] == "okta"
    assert stored["token"] and stored["expires_at"]

    profile(tmp_path, monkeypatch, "--broker", broker.url, "--provider", "okta")
    assert boto_credentials().access_key


@pytest.mark.slow
def test_a_refused_login_ends_the_command_with_one_line_and_no_session(
    broker: LiveServer, oidc_provider: DevIdentityProvider, aws: Any, home: Path
) -> None:
    command, url = start_login(broker, "admins")
    try:
        oidc_provider.next_login(ALICE_SUB)
        response = LoopbackSession().get(url, allow_redirects=True, timeout=10)
        assert response.url == query(url)["return_to"] + "?error=access_denied"
        assert "Sign-in failed" in response.text
        _, err = command.communicate(timeout=30)
    finally:
        command.kill()
        command.wait()
    assert command.returncode == 1
    assert err.endswith("chime-broker login: the sign-in failed: access_denied\n")
    assert "Traceback" not in err
    assert list(home.glob("session-*.json")) == []


@pytest.mark.parametrize("port", [49152, 8080])
def test_loopback_return_to_takes_any_port_for_native_logins_only(
    broker: LiveServer, oidc_provider: DevIdentityProvider, port: int
) -> None:
    challenge = {"code_challenge": "c" * 43, "code_challenge_method": "S256"}

    def begin(return_to: str, **params: str) -> requests.Response:
        return LoopbackSession().get(
            f"{broker.url}/v1/login/okta",
            params={"return_to": return_to, **params},
            allow_redirects=False,
            timeout=10,
        )

    assert begin(f"http://127.0.0.1:{port}/", **challenge).status_code == 302
    assert begin(f"http://127.0.0.1:{port}/cb?x=1", **challenge).status_code == 302
    for refused in (f"http://localhost:{port}/", f"http://[::1]:{port}/", "http://127.0.0.2/"):
        assert begin(refused, **challenge).status_code == 400, refused

    # A browser (cookie) login keeps exact matching: the port makes it the default.
    browser = LoopbackSession()
    authorize = browser.get(
        f"{broker.url}/v1/login/okta",
        params={"return_to": f"http://127.0.0.1:{port}/"},
        allow_redirects=False,
        timeout=10,
    )
    assert authorize.status_code == 302, authorize.text
    oidc_provider.next_login(ALICE_SUB)
    callback = browser.get(authorize.headers["Location"], allow_redirects=False, timeout=10)
    done = browser.get(callback.headers["Location"], allow_redirects=False, timeout=10)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == SPA_HOME
