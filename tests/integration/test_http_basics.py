"""The HTTP layer every route shares: problem documents, request ids, proxies, headers,
health, metrics, OpenAPI, and logs that never carry secrets."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from identity.store import open_store
from tests.fixtures.apps import MakeApp
from tests.fixtures.configs import provider_dict
from tests.fixtures.logs import log_lines

SECRET_KEY = "s3cr3t-key-0123456789-abcdefghijklmnop"
CLIENT_SECRET = "okta-client-secret-value-9876"

OKTA = provider_dict(
    "oidc",
    display_name="Example Corp",
    issuer="https://example.okta.com/oauth2/default",
    client_id="0oa1example",
    client_secret=CLIENT_SECRET,
    exchange="sts",
)
# ``make_app`` overrides: a production broker with a secret in its config and a small body cap.
HTTP: dict[str, Any] = {
    "service__secret_key": SECRET_KEY,
    "service__max_body": "1KiB",
    "providers": [OKTA],
}


@pytest.fixture
def app(make_app: MakeApp) -> Flask:
    return make_app(**HTTP)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert set(body) == {"type", "title", "status", "detail", "code", "request_id"}
    return body


def test_unknown_route_is_a_problem(app: Flask) -> None:
    assert_problem(app.test_client().get("/nope"), 404, "not_found")


def test_wrong_method_is_a_problem_with_allow(app: Flask) -> None:
    response = app.test_client().delete("/v1/providers")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_body_over_the_cap_is_413(app: Flask) -> None:
    @app.post("/echo-for-test")
    def echo() -> str:
        from flask import request

        return str(len(request.get_data()))

    response = app.test_client().post("/echo-for-test", data=b"x" * 2048)
    assert_problem(response, 413, "payload_too_large")
    assert app.test_client().post("/echo-for-test", data=b"x" * 1000).data == b"1000"


def test_unhandled_exception_shows_only_the_request_id(app: Flask, broker_log: io.StringIO) -> None:
    @app.get("/boom-for-test")
    def boom() -> str:
        raise RuntimeError(f"database password is {CLIENT_SECRET}")

    response = app.test_client().get("/boom-for-test")
    body = assert_problem(response, 500, "internal_error")
    assert CLIENT_SECRET not in response.get_data(as_text=True)
    assert "RuntimeError" not in response.get_data(as_text=True)
    assert "Traceback" not in body["detail"]
    logged = broker_log.getvalue()
    assert "RuntimeError" in logged
    assert body["request_id"] in logged
    assert CLIENT_SECRET not in logged


def test_request_id_is_accepted_when_sane_and_replaced_otherwise(app: Flask) -> None:
    client = app.test_client()
    sane = client.get("/healthz", headers={"X-Request-Id": "abc-123-def-456"})
    assert sane.headers["X-Request-Id"] == "abc-123-def-456"
    bad_ids = ["short", "x" * 200, "has space in it", "new\\nline-injection", "<script>x</script>"]
    for bad in bad_ids:
        response = client.get("/healthz", headers={"X-Request-Id": bad})
        assert response.headers["X-Request-Id"] != bad
        assert len(response.headers["X-Request-Id"]) == 32


def test_security_headers_on_every_response(app: Flask) -> None:
    client = app.test_client()
    for response in (client.get("/healthz"), client.get("/nope"), client.get("/v1/providers")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"


def test_urls_come_from_public_url_never_from_host(app: Flask) -> None:
    response = app.test_client().get(
        "/v1/providers",
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    assert response.status_code == 200
    assert response.get_json() == [
        {
            "name": "okta",
            "kind": "oidc",
            "display_name": "Example Corp",
            "login_url": "https://auth.example.chat/v1/login/okta",
        }
    ]


def test_meeting_guests_get_no_login_button(make_app: MakeApp) -> None:
    guests = {
        "name": "guests",
        "kind": "guest",
        "exchange": "sts",
        "invite": {
            "issuer": "https://app.example.chat",
            "audience": "chime-broker",
            "jwks_url": "https://app.example.chat/.well-known/jwks.json",
        },
    }
    app = make_app(**{**HTTP, "providers": [OKTA, guests]})
    names = [p["name"] for p in app.test_client().get("/v1/providers").get_json()]
    assert names == ["okta"]


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "expected_client"),
    [
        (0, "203.0.113.7", "10.0.0.1"),
        (1, "203.0.113.7", "203.0.113.7"),
        (1, "198.51.100.9, 203.0.113.7", "203.0.113.7"),
        (2, "198.51.100.9, 203.0.113.7", "198.51.100.9"),
    ],
)
def test_client_address_believes_only_trusted_proxy_hops(
    proxies: int,
    forwarded_for: str,
    expected_client: str,
    broker_log: io.StringIO,
    make_app: MakeApp,
) -> None:
    app = make_app(**HTTP, service__trusted_proxies=proxies)
    app.test_client().get(
        "/healthz",
        headers={
            "X-Forwarded-For": forwarded_for,
            "X-Forwarded-Proto": ", ".join(["https"] * max(proxies, 1)),
        },
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    access = log_lines(broker_log)
    access = [entry for entry in access if entry["logger"] == "chime_broker.access"]
    assert access[-1]["client"] == expected_client
    assert access[-1]["scheme"] == ("https" if proxies else "http")


def test_health_and_readiness(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"config": "ok", "store": "ok"}


def test_readiness_fails_when_the_store_is_unreachable(closed_port: int, make_app: MakeApp) -> None:
    store = open_store(f"redis://127.0.0.1:{closed_port}/0")
    app = make_app(**HTTP, store=store)
    assert_problem(app.test_client().get("/readyz"), 503, "upstream_unavailable")


def test_metrics_count_requests_by_route_and_status(app: Flask) -> None:
    client = app.test_client()
    client.get("/v1/providers")
    client.get("/v1/providers")
    client.get("/nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'chime_broker_requests_total{method="GET",route="/v1/providers",status="200"} 2.0' in text
    )
    assert 'chime_broker_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert "chime_broker_request_duration_seconds_bucket" in text


def test_openapi_is_valid_and_documents_every_route(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "delete", "patch"}
    }
    served = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method))
    assert served == documented


def test_logs_never_carry_secrets_from_config_or_request(
    app: Flask, broker_log: io.StringIO
) -> None:
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
    client = app.test_client()
    client.get(
        f"/v1/nothing-here?id_token={jwt_like}&code=authcode123456",
        headers={"Authorization": f"Bearer {jwt_like}", "Cookie": f"s={SECRET_KEY}"},
    )
    logging.getLogger("chime_broker.test").warning(
        "upstream said %s with key %s and %s", jwt_like, SECRET_KEY, CLIENT_SECRET
    )
    logging.getLogger("chime_broker.test").info(
        "aws answered", extra={"fields": {"access_key": "ASIAEXAMPLEKEY1234567", "token": jwt_like}}
    )
    logged = broker_log.getvalue()
    assert logged.count("\n") >= 3
    for secret in (SECRET_KEY, CLIENT_SECRET, jwt_like, "ASIAEXAMPLEKEY1234567", "authcode123456"):
        assert secret not in logged
    assert "[redacted]" in logged
