"""Hardening, each refusal sent for real: HSTS on an https broker, the session cookie's
``__Host-`` name and two cookies of that name, ``mode: demo`` served by a WSGI server or
Lambda, the id token of the logout URL kept out of the logs, and mobile id tokens made
single-use by ``require_nonce``.

The browser sign-in runs through the Flask test client against the local OIDC provider, so
the broker can have an https ``public_url`` (the IdP's redirect to the callback is read, not
followed); AWS is the moto server, whose recorder shows what the broker sent.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from identity.errors import InvalidToken
from identity.models import Principal
from identity.providers.id_token import SingleUseNonces
from identity.store import MemoryStore, open_store
from service.cli.config_file import APP_LOAD_ERROR
from service.demo.dev_idp import DevIdentityProvider
from tests.fixtures.apps import MakeApp
from tests.fixtures.oidc_provider import ALICE_SUB

REPO = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://auth.example.chat"
SPA = "https://app.example.chat"
SPA_HOME = f"{SPA}/"
CLIENT_ID = "hardening-spa"
CLIENT_SECRET = "hardening-spa-secret"
MOBILE = "hardening-mobile"
HOST_COOKIE = "__Host-chime_broker_session"
HSTS = "max-age=31536000"
# AWS that stops answering fails a test in seconds, not after botocore's minute.
AWS_TIMEOUTS = {"connect": 2, "read": 5}


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def set_cookies(response: TestResponse) -> dict[str, str]:
    """Every ``Set-Cookie`` of ``response``, by cookie name, as sent."""
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def assert_problem(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type.startswith("application/problem+json")
    body = response.get_json()
    assert body["code"] == code
    assert "credentials" not in body and "broker_session" not in body


def oidc_entry(idp: DevIdentityProvider, **extra: Any) -> dict[str, Any]:
    return {
        "name": "okta",
        "kind": "oidc",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audiences": [CLIENT_ID, MOBILE],
        "scopes": ["openid", "email", "profile"],
        "exchange": "sts",
        "map": {"user_id": "okta-{sub}"},
        **extra,
    }


@pytest.fixture
def https_broker(make_app: MakeApp, oidc_provider: DevIdentityProvider, aws: Any) -> Flask:
    """A broker whose ``public_url`` is https, with one OIDC provider (browser and mobile)."""
    oidc_provider.register_client(
        CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{PUBLIC_URL}/v1/callback/okta"]
    )
    return make_app(
        service__public_url=PUBLIC_URL,
        service__allowed_origins=[SPA],
        service__allowed_return_to=[SPA_HOME],
        aws__timeouts=AWS_TIMEOUTS,
        providers=[oidc_entry(oidc_provider)],
    )


def sign_in(client: FlaskClient, idp: DevIdentityProvider) -> tuple[TestResponse, TestResponse]:
    """A whole browser sign-in: the login start's answer and the callback's."""
    begun = client.get("/v1/login/okta", query_string={"return_to": SPA_HOME})
    assert begun.status_code == 302, begun.get_data(as_text=True)
    idp.next_login(ALICE_SUB)
    at_idp = requests.get(begun.headers["Location"], allow_redirects=False, timeout=10)
    assert at_idp.status_code == 302, at_idp.text
    callback = urlsplit(at_idp.headers["Location"])
    assert f"{callback.scheme}://{callback.netloc}" == PUBLIC_URL
    done = client.get(callback.path, query_string=callback.query)
    assert done.status_code == 302, done.get_data(as_text=True)
    assert done.headers["Location"] == SPA_HOME
    return begun, done


# -- HSTS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/v1/providers"),
        ("GET", "/v1/no-such-route"),
        ("POST", "/v1/token"),
        ("GET", "/v1/session"),
    ],
)
def test_an_https_broker_sends_hsts_on_every_answer(
    make_app: MakeApp, method: str, path: str
) -> None:
    response = make_app().test_client().open(path, method=method, data=b"[", content_type="x/y")
    assert response.headers["Strict-Transport-Security"] == HSTS


def test_an_http_broker_sends_no_hsts(make_app: MakeApp) -> None:
    client = make_app(service__public_url="http://127.0.0.1:8000").test_client()
    for path in ("/healthz", "/v1/no-such-route"):
        assert "Strict-Transport-Security" not in client.get(path).headers


# -- the session cookie's name --------------------------------------------------------------


def test_an_https_sign_in_sets_a_host_prefixed_session_cookie(
    https_broker: Flask, oidc_provider: DevIdentityProvider
) -> None:
    begun, done = sign_in(https_broker.test_client(), oidc_provider)

    [pre_login] = set_cookies(begun)
    assert pre_login.startswith(f"{HOST_COOKIE}_login")
    assert "__Host-__Host-" not in pre_login
    cookie = set_cookies(done)[HOST_COOKIE]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path=/", "samesite=lax"} <= flags
    assert not any(flag.startswith("domain") for flag in flags)
    assert "chime_broker_session" not in set_cookies(done)


def test_an_http_broker_keeps_the_plain_name_and_prefixes_the_pre_login_cookie_once(
    make_app: MakeApp, oidc_provider: DevIdentityProvider
) -> None:
    url = "http://127.0.0.1:8000"
    oidc_provider.register_client(CLIENT_ID, redirect_uris=[f"{url}/v1/callback/okta"])
    app = make_app(
        service__public_url=url,
        service__allowed_return_to=[SPA_HOME],
        providers=[oidc_entry(oidc_provider, client_secret=None)],
    )
    assert app.extensions["chime_broker"].config.service.cookie_name == "chime_broker_session"

    begun = app.test_client().get("/v1/login/okta", query_string={"return_to": SPA_HOME})

    assert begun.status_code == 302
    [pre_login] = set_cookies(begun)
    assert pre_login.startswith("__Host-chime_broker_session_login")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/session"), ("POST", "/v1/credentials"), ("POST", "/v1/logout")],
)
def test_two_session_cookies_of_the_name_are_refused(
    https_broker: Flask, oidc_provider: DevIdentityProvider, aws: Any, method: str, path: str
) -> None:
    signed_in = https_broker.test_client()
    _, done = sign_in(signed_in, oidc_provider)
    session = set_cookies(done)[HOST_COOKIE].split(";", 1)[0].split("=", 1)[1]
    # A valid session first: answering with the first cookie would let a planted one win.
    planted = https_broker.test_client(use_cookies=False)
    aws.recorder.reset()

    response = planted.open(
        path,
        method=method,
        headers={"Origin": SPA, "Cookie": f"{HOST_COOKIE}={session}; {HOST_COOKIE}=planted"},
    )

    assert_problem(response, 400, "invalid_request")
    assert HOST_COOKIE not in set_cookies(response)
    assert aws.recorder.requests() == []
    # The session itself was not touched: it still answers with one cookie.
    who = planted.get("/v1/session", headers={"Origin": SPA, "Cookie": f"{HOST_COOKIE}={session}"})
    assert who.status_code == 200, who.get_data(as_text=True)


# -- the id token in the logout URL ----------------------------------------------------------


def test_the_logout_url_carries_the_id_token_and_no_log_line_does(
    https_broker: Flask, oidc_provider: DevIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = https_broker.test_client()
    sign_in(client, oidc_provider)

    out = client.post("/v1/logout", headers={"Origin": SPA})

    assert out.status_code == 200, out.get_data(as_text=True)
    end_session_url = out.get_json()["end_session_url"]
    id_token = query(end_session_url)["id_token_hint"]
    _, payload, signature = id_token.split(".")
    assert caplog.records, "the sign-in and the logout were logged"
    for record in caplog.records:
        logged = f"{record.getMessage()} {record.__dict__}"
        assert "id_token_hint" not in logged
        for part in (id_token, payload, signature):
            assert part not in logged, record.name


# -- mode: demo outside the command line -----------------------------------------------------


@pytest.fixture
def demo_config() -> Path:
    return REPO / "service" / "demo" / "demo.yaml"


def load_wsgi(config: Path, *command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``command`` (default: ``python -c "import wsgi"``) in the checkout, with
    ``BROKER_CONFIG=config`` and ``extra`` in its environment, and no other AWS_LAMBDA_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA")}
    return subprocess.run(
        list(command or (sys.executable, "-c", "import wsgi")),
        env={**base, "BROKER_CONFIG": str(config), **extra},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_importing_wsgi_with_mode_demo_fails_naming_the_mode(demo_config: Path) -> None:
    result = load_wsgi(demo_config)
    assert result.returncode == APP_LOAD_ERROR
    assert "  mode: demo serves only under `chime-broker demo`" in result.stderr
    assert "Traceback" not in result.stderr


def test_gunicorn_with_mode_demo_does_not_boot(demo_config: Path) -> None:
    result = load_wsgi(
        demo_config,
        *(sys.executable, "-m", "gunicorn", "-b", "127.0.0.1:0", "-w", "1", "wsgi:application"),
    )
    assert result.returncode == APP_LOAD_ERROR
    assert "mode: demo serves only" in result.stderr
    # One worker tried once; the master stopped instead of starting it again.
    assert result.stderr.count("Booting worker") == 1
    assert "App failed to load" in result.stderr


def test_lambda_with_mode_demo_fails_its_init_naming_the_mode(demo_config: Path) -> None:
    result = load_wsgi(demo_config, AWS_LAMBDA_FUNCTION_NAME="chime-broker")
    assert result.returncode != 0
    assert "LambdaStartupError: mode: demo serves only" in result.stderr


# -- single-use nonces at the token exchange -------------------------------------------------


@pytest.fixture
def nonce_broker(make_app: MakeApp, oidc_provider: DevIdentityProvider, aws: Any) -> FlaskClient:
    entry = oidc_entry(oidc_provider, require_nonce=True)
    return make_app(aws__timeouts=AWS_TIMEOUTS, providers=[entry]).test_client()


def mobile_token(idp: DevIdentityProvider, nonce: str, sub: str = ALICE_SUB) -> str:
    return idp.mint_id_token({"sub": sub, "nonce": nonce}, audience=MOBILE)


def exchange(client: FlaskClient, id_token: str, nonce: str | None) -> TestResponse:
    body: dict[str, Any] = {"provider": "okta", "id_token": id_token}
    if nonce is not None:
        body["nonce"] = nonce
    return client.post("/v1/token", json=body)


def test_a_nonce_is_exchanged_once(
    nonce_broker: FlaskClient, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    token = mobile_token(oidc_provider, "n-first")
    first = exchange(nonce_broker, token, "n-first")
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.get_json()["broker_session"]["token"]
    assert len(aws.recorder.calls("AssumeRole")) == 1
    aws.recorder.reset()

    again = exchange(nonce_broker, token, "n-first")
    same_nonce = exchange(nonce_broker, mobile_token(oidc_provider, "n-first"), "n-first")

    for refused in (again, same_nonce):
        assert_problem(refused, 401, "invalid_token")
        assert refused.get_json()["detail"] == "id token already used"
        assert "Set-Cookie" not in refused.headers
    assert aws.recorder.requests() == []

    # Another user, so the credentials cached for the first cannot answer.
    fresh = exchange(nonce_broker, mobile_token(oidc_provider, "n-second", "bob"), "n-second")
    assert fresh.status_code == 200, fresh.get_data(as_text=True)
    assert len(aws.recorder.calls("AssumeRole")) == 1


def test_without_the_nonce_the_token_is_refused_before_the_cache(
    nonce_broker: FlaskClient, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    token = mobile_token(oidc_provider, "n-kept")
    assert_problem(exchange(nonce_broker, token, None), 401, "invalid_token")
    assert aws.recorder.requests() == []
    # A refused attempt does not spend the nonce.
    assert exchange(nonce_broker, token, "n-kept").status_code == 200


def test_a_token_living_longer_than_a_day_is_refused_under_require_nonce(
    nonce_broker: FlaskClient, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    token = oidc_provider.mint_id_token(
        {"sub": ALICE_SUB, "nonce": "n-long"}, audience=MOBILE, lifetime=2 * 86400
    )
    refused = exchange(nonce_broker, token, "n-long")
    assert_problem(refused, 401, "invalid_token")
    assert aws.recorder.requests() == []


def test_an_exchange_that_fails_upstream_gives_the_nonce_back(
    make_app: MakeApp,
    oidc_provider: DevIdentityProvider,
    aws: Any,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store("memory://")
    entry = oidc_entry(oidc_provider, require_nonce=True)
    token = mobile_token(oidc_provider, "n-retry")
    with monkeypatch.context() as unreachable:
        unreachable.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
        down = make_app(store=store, aws__timeouts=AWS_TIMEOUTS, providers=[entry])
        failed = exchange(down.test_client(), token, "n-retry")
    assert failed.status_code in (502, 503, 504), failed.get_data(as_text=True)

    up = make_app(store=store, aws__timeouts=AWS_TIMEOUTS, providers=[entry])
    retried = exchange(up.test_client(), token, "n-retry")
    assert retried.status_code == 200, retried.get_data(as_text=True)
    assert_problem(exchange(up.test_client(), token, "n-retry"), 401, "invalid_token")
    store.close()


def test_without_require_nonce_a_token_may_be_exchanged_until_it_expires(
    make_app: MakeApp, oidc_provider: DevIdentityProvider, aws: Any
) -> None:
    client = make_app(aws__timeouts=AWS_TIMEOUTS, providers=[oidc_entry(oidc_provider)])
    token = mobile_token(oidc_provider, "n-any")
    first = exchange(client.test_client(), token, None)
    second = exchange(client.test_client(), token, None)
    assert first.status_code == second.status_code == 200
    sessions = {r.get_json()["broker_session"]["token"] for r in (first, second)}
    assert len(sessions) == 2


def test_a_nonce_spent_at_one_provider_stays_usable_at_another() -> None:
    nonces = SingleUseNonces(MemoryStore(), clock=lambda: 1_000.0)
    expires = datetime.fromtimestamp(1_600, tz=UTC)

    def principal(provider: str) -> Principal:
        return Principal(provider, "https://op", "alice", {"nonce": "n"}, token_expires_at=expires)

    nonces.spend(principal("corp"), leeway=30)
    nonces.spend(principal("partner"), leeway=30)
    with pytest.raises(InvalidToken):
        nonces.spend(principal("corp"), leeway=30)
