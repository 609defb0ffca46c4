"""What an operator sees: bounded Prometheus metrics that count vends, caches, sessions and
refused sign-ins; one audit record per hand-out of credentials and per session end, without
secrets; JSON lines only, gunicorn's among them, under ``chime-broker serve``; and a README
that documents exactly the series and audit fields the code has."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST

from identity.session_admin import revoke_user
from service.metrics import metrics_table
from tests.fixtures.apps import MakeApp
from tests.fixtures.configs import provider_dict
from tests.fixtures.logs import log_lines
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.serve import corp_config, launch, vend_as_ada

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("chime-broker"))
CLIENT_ID = "mobile-app"
# Keys of every JSON log line; the rest of an audit record is the audit schema.
LOG_KEYS = {"time", "level", "logger", "message", "request_id"}


def audit_records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in log_lines(buffer) if line["logger"] == "chime_broker.audit"]


@pytest.fixture
def app(make_app: MakeApp, aws: AwsWorld, oidc_provider: Any) -> Flask:
    """``corp`` vends with STS, ``dev`` with Cognito developer identities."""
    oidc_provider.register_client(CLIENT_ID)
    entries = [
        provider_dict(
            "oidc",
            name=name,
            issuer=oidc_provider.issuer,
            client_id=CLIENT_ID,
            exchange=exchange,
            client_secret="browser-sign-in-secret-" + name,
            map={"user_id": f"{name}-{{sub}}"},
        )
        for name, exchange in (("corp", "sts"), ("dev", "cognito_developer"))
    ]
    return make_app(providers=entries)


def exchange(client: FlaskClient, oidc_provider: Any, provider: str, sub: str) -> Any:
    token = oidc_provider.mint_id_token({"sub": sub}, audience=CLIENT_ID)
    response = client.post("/v1/token", json={"provider": provider, "id_token": token})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def series(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` in an exposition."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


# -- metrics -------------------------------------------------------------------------------


def test_invented_methods_and_paths_do_not_grow_the_exposition(make_app: MakeApp) -> None:
    client = make_app().test_client()

    def invent(start: int, count: int) -> None:
        for n in range(start, start + count):
            client.open("/v1/providers", method=f"INVENTED{n}")
            client.get(f"/no/such/route/{n}")

    invent(0, 3)
    client.get("/metrics")  # so that the baseline counts /metrics itself
    before = client.get("/metrics").get_data(as_text=True)
    invent(3, 300)
    after = client.get("/metrics")

    text = after.get_data(as_text=True)
    assert len(text.splitlines()) == len(before.splitlines())
    requests = series(text, "chime_broker_requests_total")
    assert requests['method="other",route="<unmatched>",status="405"'] == 303.0
    assert requests['method="GET",route="<unmatched>",status="404"'] == 303.0
    assert "INVENTED" not in text
    assert "/no/such" not in text


def test_the_metrics_content_type_names_one_charset(make_app: MakeApp) -> None:
    response = make_app().test_client().get("/metrics")
    content_type = response.headers["Content-Type"]
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.count("charset") == 1


def test_vends_caches_sessions_and_refusals_are_counted(
    app: Flask, aws: AwsWorld, oidc_provider: Any
) -> None:
    client = app.test_client()
    exchange(client, oidc_provider, "corp", "ada")
    second = exchange(client, oidc_provider, "corp", "ada")
    # moto's Cognito credentials last 90 s, too short to cache: each exchange vends.
    exchange(client, oidc_provider, "dev", "bob")
    exchange(client, oidc_provider, "dev", "bob")
    token = second.get_json()["broker_session"]["token"]
    assert client.post("/v1/logout", headers={"Authorization": f"Bearer {token}"}).status_code
    refused = client.post("/v1/token", json={"provider": "corp", "id_token": "not-a-token"})
    assert refused.status_code == 401
    forged = client.get("/v1/callback/corp?state=forged&code=forged")
    assert forged.status_code == 400

    text = client.get("/metrics").get_data(as_text=True)
    assert series(text, "chime_broker_vends_total") == {
        'exchange="sts",outcome="vended",provider="corp"': 1.0,
        'exchange="sts",outcome="reused",provider="corp"': 1.0,
        'exchange="cognito_developer",outcome="vended",provider="dev"': 2.0,
    }
    assert series(text, "chime_broker_cache_lookups_total") == {
        'cache="credentials",result="miss"': 3.0,
        'cache="credentials",result="hit"': 1.0,
        'cache="identity_id",result="miss"': 1.0,
        'cache="identity_id",result="hit"': 1.0,
    }
    assert series(text, "chime_broker_sessions_started_total") == {'origin="token"': 4.0}
    assert series(text, "chime_broker_sessions_ended_total") == {'origin="token"': 1.0}
    assert series(text, "chime_broker_logins_refused_total") == {
        'code="invalid_token"': 1.0,
        'code="invalid_request"': 1.0,
    }
    calls = series(text, "chime_broker_upstream_duration_seconds_count")
    assert calls['operation="AssumeRole",upstream="aws"'] == 1.0
    assert calls['operation="GetOpenIdTokenForDeveloperIdentity",upstream="aws"'] == 2.0
    assert calls['operation="GetCredentialsForIdentity",upstream="aws"'] == 2.0
    # What the counters say is what reached AWS.
    assert len(aws.recorder.calls("AssumeRole")) == 1
    assert len(aws.recorder.calls("GetOpenIdTokenForDeveloperIdentity")) == 2


def test_the_readme_metrics_table_is_the_codes() -> None:
    assert metrics_table() in (REPO / "README.md").read_text()


# -- audit ---------------------------------------------------------------------------------


def test_each_hand_out_and_session_end_is_one_audit_record_without_secrets(
    app: Flask, aws: AwsWorld, oidc_provider: Any, broker_log: io.StringIO
) -> None:
    client = app.test_client()
    id_token = oidc_provider.mint_id_token({"sub": "ada"}, audience=CLIENT_ID)
    first = client.post("/v1/token", json={"provider": "corp", "id_token": id_token})
    second = exchange(client, oidc_provider, "corp", "ada")
    cognito = exchange(client, oidc_provider, "dev", "bob")
    token = first.get_json()["broker_session"]["token"]
    logout = client.post("/v1/logout", headers={"Authorization": f"Bearer {token}"})
    assert logout.status_code == 200

    issued_a, reused_a, issued_b, ended = audit_records(broker_log)
    assert issued_a["event"] == reused_a["event"] == issued_b["event"] == "credentials_issued"
    assert issued_a["request_id"] == first.headers["X-Request-Id"]
    assert reused_a["request_id"] == second.headers["X-Request-Id"]
    expiration = first.get_json()["credentials"]["expiration"]
    assert issued_a | {"time": None, "request_id": None} == {
        "time": None,
        "level": "info",
        "logger": "chime_broker.audit",
        "message": "audit",
        "request_id": None,
        "audit": 1,
        "event": "credentials_issued",
        "provider": "corp",
        "user_id": "corp-ada",
        "source_identity": "corp-ada",
        "identity_id": None,
        "role_arn": aws.user_role_arn,
        "tags": {aws.user_tag: "corp-ada"},
        "duration_seconds": issued_a["duration_seconds"],
        "expiration": expiration,
        "exchange": "sts",
        "origin": "token",
        "reused": False,
    }
    assert 900 <= issued_a["duration_seconds"] <= 3600
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert assume_role["SourceIdentity"] == issued_a["source_identity"]
    assert reused_a["reused"] is True
    assert issued_b["identity_id"] == cognito.get_json()["identity_id"]
    assert (issued_b["exchange"], issued_b["source_identity"]) == ("cognito_developer", None)
    assert ended["event"] == "session_ended"
    assert ended["request_id"] == logout.headers["X-Request-Id"]
    assert (ended["provider"], ended["user_id"], ended["origin"], ended["ended_by"]) == (
        "corp",
        "corp-ada",
        "token",
        "logout",
    )

    text = broker_log.getvalue()
    for body in (first.get_json(), second.get_json(), cognito.get_json()):
        assert body["credentials"]["secret_access_key"] not in text
        assert body["credentials"]["session_token"] not in text
        assert body["broker_session"]["token"] not in text
    assert id_token not in text


def test_a_revoked_session_is_audited_as_a_revocation(
    app: Flask, oidc_provider: Any, broker_log: io.StringIO
) -> None:
    exchange(app.test_client(), oidc_provider, "corp", "ada")

    revoke_user(app.extensions["chime_broker"].broker, "corp-ada", "corp")

    *_, ended = audit_records(broker_log)
    assert (ended["event"], ended["user_id"], ended["ended_by"]) == (
        "session_ended",
        "corp-ada",
        "revocation",
    )
    assert "request_id" not in ended


def test_the_readme_documents_every_audit_field(
    app: Flask, oidc_provider: Any, broker_log: io.StringIO
) -> None:
    client = app.test_client()
    body = exchange(client, oidc_provider, "corp", "ada").get_json()
    client.post(
        "/v1/logout", headers={"Authorization": f"Bearer {body['broker_session']['token']}"}
    )
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Metrics and audit") : readme.index("## Failure behaviour")]
    fields = {key for record in audit_records(broker_log) for key in record} - (
        LOG_KEYS - {"time", "request_id"}
    )
    assert {"event", "ended_by", "source_identity", "time", "request_id"} <= fields
    for field in fields:
        assert f"| `{field}` |" in section, field


# -- logs under serve ----------------------------------------------------------------------


def test_serve_writes_only_json_lines_with_gunicorns_own_and_request_ids(
    tmp_path: Path, aws: AwsWorld, oidc_provider: Any
) -> None:
    config = corp_config(aws, oidc_provider, tmp_path)
    server = launch(CLI, config, workers=1, env=dict(os.environ))
    try:
        server.ready()
        vend_as_ada(server.url, aws, oidc_provider)
    finally:
        server.stop()

    lines = [line for line in "".join(server.stderr).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    loggers = {record["logger"] for record in records}
    assert "gunicorn.error" in loggers
    assert any("gevent" in r["message"] for r in records if r["logger"] == "gunicorn.error")
    [access] = [
        r for r in records if r["logger"] == "chime_broker.access" and r["route"] == "/v1/token"
    ]
    assert access["status"] == 200
    assert re.fullmatch(r"[0-9a-f]{32}", access["request_id"])
    [audit] = [r for r in records if r["logger"] == "chime_broker.audit"]
    assert audit["request_id"] == access["request_id"]
    for record in records:
        assert "exception" not in record, record
