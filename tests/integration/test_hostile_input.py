"""Hostile request bodies that once reached a 500: each is a 400 problem, with no session,
no credentials and no AWS call."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fixtures.apps import MakeApp

NESTED = {
    "arrays": b"[" * 20000 + b"]" * 20000,
    "objects": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "a nested provider": b'{"provider":' + b"[" * 20000 + b"]" * 20000 + b"}",
    "a nested token": b'{"provider":"corp","id_token":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
}


@pytest.fixture
def client(make_app: MakeApp, oidc_provider: Any) -> FlaskClient:
    app = make_app(
        service__max_body="256KiB",
        providers=[
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": oidc_provider.issuer,
                "client_id": "mobile-app",
                "exchange": "sts",
                "map": {"user_id": "corp-{sub}"},
            },
            {
                "name": "lobby",
                "kind": "guest",
                "exchange": "sts",
                "allow_open_guests": True,
                "map": {"user_id": "lobby-{random}"},
            },
        ],
    )
    return app.test_client()


@pytest.mark.parametrize("path", ["/v1/token", "/v1/guest"])
@pytest.mark.parametrize("shape", list(NESTED))
def test_deeply_nested_json_is_a_400(client: FlaskClient, aws: Any, path: str, shape: str) -> None:
    response = client.post(path, data=NESTED[shape], content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "invalid_request"
    assert "credentials" not in body and "broker_session" not in body
    assert "Set-Cookie" not in response.headers
    assert aws.recorder.requests() == []


@pytest.mark.parametrize("exp", [253402300800, 10**15, 1e300], ids=["year 10000", "1e15", "1e300"])
def test_a_signed_token_expiring_past_year_9999_is_invalid_not_an_overflow(
    client: FlaskClient, aws: Any, oidc_provider: Any, exp: float
) -> None:
    oidc_provider.register_client("mobile-app")
    token = oidc_provider.mint_id_token({"sub": "ada", "exp": exp}, audience="mobile-app")
    response = client.post("/v1/token", json={"provider": "corp", "id_token": token})
    assert response.status_code == 401, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert body["code"] == "invalid_token"
    assert "credentials" not in body and "broker_session" not in body
    assert aws.recorder.requests() == []
