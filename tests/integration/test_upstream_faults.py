"""AWS and identity providers failing under a running broker: what clients get, how long the
broker tries (the configured policy, counted in attempts, never in wall-clock time), what
the operator sees in the log and the metrics, and no traceback anywhere.

AWS is the moto server behind ``tests.fixtures.fault_proxy``, which throttles, fails,
hangs, resets or flakes per operation; the IdP is the local dev IdP, or a closed port.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from identity.aws import MAX_ATTEMPTS, AwsClients
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.fixtures.configs import provider_dict
from tests.fixtures.fault_proxy import Fault, FaultProxy
from tests.fixtures.live_server import LiveServer
from tests.fixtures.logs import log_lines
from tests.fixtures.moto_server import AwsWorld

CLIENT_ID = "mobile-app"
# A hung call times out after `read`; then no whole attempt (connect + read) fits in `total`
# any more, so the deadline, not the attempt count, ends it after one attempt.
HANG_TIMEOUTS: dict[str, float] = {"connect": 1, "read": 0.5, "total": 0.9}
# Room for MAX_ATTEMPTS fast failures and botocore's backoff between them.
RETRY_TIMEOUTS: dict[str, float] = {"connect": 2, "read": 5, "total": 20}
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}


def providers(issuer: str) -> list[dict[str, Any]]:
    """``corp`` vends with STS (AssumeRole), ``dev`` with Cognito developer identities
    (GetOpenIdTokenForDeveloperIdentity, GetCredentialsForIdentity)."""
    return [
        provider_dict(
            "oidc",
            name="corp",
            issuer=issuer,
            client_id=CLIENT_ID,
            exchange="sts",
            map={"user_id": "corp-{sub}"},
        ),
        provider_dict(
            "oidc",
            name="dev",
            issuer=issuer,
            client_id=CLIENT_ID,
            exchange="cognito_developer",
            map={"user_id": "dev-{sub}"},
        ),
    ]


def log_records(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line parsed as JSON; none may carry a traceback."""
    records = log_lines(buffer)
    for record in records:
        assert "exception" not in record, record
        assert "Traceback" not in json.dumps(record), record
    return records


Exchange = Callable[..., Any]


@pytest.fixture
def exchange(oidc_provider: Any) -> Exchange:
    """``exchange(client, provider, sub)``: ``POST /v1/token`` with an id token of ``sub``."""
    oidc_provider.register_client(CLIENT_ID)

    def post(client: FlaskClient, provider: str, sub: str) -> Any:
        token = oidc_provider.mint_id_token({"sub": sub}, audience=CLIENT_ID)
        return client.post("/v1/token", json={"provider": provider, "id_token": token})

    return post


@pytest.fixture
def broker_for(
    make_app: MakeApp, fault_aws: FaultProxy, oidc_provider: Any
) -> Callable[[dict[str, float]], Flask]:
    """``broker_for(timeouts)``: the broker with ``corp`` and ``dev``, reaching AWS
    through the fault proxy with ``aws.timeouts`` = ``timeouts``."""

    def build(timeouts: dict[str, float]) -> Flask:
        return make_app(providers=providers(oidc_provider.issuer), aws__timeouts=timeouts)

    return build


def assert_refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert set(body) == PROBLEM_FIELDS
    assert body["code"] == code
    assert "credentials" not in body
    return dict(body)


def logged_by(buffer: io.StringIO, logger: str) -> list[dict[str, Any]]:
    return [r for r in log_records(buffer) if r["logger"] == logger]


def metrics_text(app: Flask) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


# -- persistent faults: the status, the attempts, the log, the metrics ----------------------


@pytest.mark.parametrize(
    ("fault", "status", "code", "aws_code", "retry_after"),
    [
        ("throttle", 429, "rate_limited", "Throttling", True),
        ("fail500", 502, "upstream_error", "InternalFailure", False),
        ("fail503", 503, "upstream_unavailable", "ServiceUnavailable", True),
        ("reset", 503, "upstream_unavailable", "ConnectionClosedError", False),
    ],
)
def test_sts_failing_every_attempt_is_answered_after_the_standard_retries(
    broker_for: Callable[[dict[str, float]], Flask],
    fault_aws: FaultProxy,
    aws: AwsWorld,
    exchange: Exchange,
    broker_log: io.StringIO,
    fault: Fault,
    status: int,
    code: str,
    aws_code: str,
    retry_after: bool,
) -> None:
    app = broker_for(RETRY_TIMEOUTS)
    fault_aws.inject("AssumeRole", fault)

    response = exchange(app.test_client(), "corp", "ada")

    assert_refused(response, status, code)
    if retry_after:
        assert int(response.headers["Retry-After"]) in range(1, 6)
    else:
        assert "Retry-After" not in response.headers
    assert fault_aws.attempts("AssumeRole") == MAX_ATTEMPTS
    assert aws.recorder.calls("AssumeRole") == []
    [failure] = logged_by(broker_log, "chime_broker.aws")
    assert failure["level"] == "warning"
    assert (failure["operation"], failure["error_code"]) == ("AssumeRole", aws_code)
    assert failure["attempts"] == MAX_ATTEMPTS
    text = metrics_text(app)
    label = aws_code if fault != "reset" else "connection"
    assert (
        f'chime_broker_upstream_errors_total{{code="{label}",operation="AssumeRole",'
        'upstream="aws"} 1.0' in text
    )
    assert (
        f'chime_broker_vends_total{{exchange="sts",outcome="{code}",provider="corp"}} 1.0' in text
    )


def test_cognito_throttling_is_a_429_with_retry_after(
    broker_for: Callable[[dict[str, float]], Flask],
    fault_aws: FaultProxy,
    aws: AwsWorld,
    exchange: Exchange,
    broker_log: io.StringIO,
) -> None:
    app = broker_for(RETRY_TIMEOUTS)
    fault_aws.inject("GetOpenIdTokenForDeveloperIdentity", "throttle")

    response = exchange(app.test_client(), "dev", "ada")

    assert_refused(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) in range(1, 6)
    assert fault_aws.attempts("GetOpenIdTokenForDeveloperIdentity") == MAX_ATTEMPTS
    assert fault_aws.attempts("GetCredentialsForIdentity") == 0
    [failure] = logged_by(broker_log, "chime_broker.aws")
    assert failure["error_code"] == "TooManyRequestsException"


# -- a hang: the configured timeouts and deadline, not a wall clock -------------------------


def test_a_hung_call_is_a_504_after_one_read_timeout_and_the_deadline(
    broker_for: Callable[[dict[str, float]], Flask],
    fault_aws: FaultProxy,
    aws: AwsWorld,
    exchange: Exchange,
    broker_log: io.StringIO,
) -> None:
    app = broker_for(HANG_TIMEOUTS)
    fault_aws.inject("AssumeRole", "hang")

    response = exchange(app.test_client(), "corp", "ada")

    assert_refused(response, 504, "upstream_timeout")
    # One attempt: after a read timeout no whole attempt fits in the deadline.
    assert fault_aws.attempts("AssumeRole") == 1
    assert aws.recorder.calls("AssumeRole") == []
    [failure] = logged_by(broker_log, "chime_broker.aws")
    assert (failure["level"], failure["operation"]) == ("warning", "AssumeRole")
    assert failure["error_code"] == "DeadlineExceeded"
    assert 'code="timeout",operation="AssumeRole",upstream="aws"} 1.0' in metrics_text(app)


def test_clients_are_built_with_the_configured_timeouts_and_retry_policy(
    make_config: MakeConfig,
) -> None:
    config = make_config(aws__timeouts=HANG_TIMEOUTS)
    clients = AwsClients(config)
    assert clients.policy.timeouts.total == HANG_TIMEOUTS["total"]
    client = clients.sts
    assert client.meta.config.connect_timeout == HANG_TIMEOUTS["connect"]
    assert client.meta.config.read_timeout == HANG_TIMEOUTS["read"]
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}


# -- transient faults: retried where nobody sees them ---------------------------------------


@pytest.mark.parametrize("fault", ["fail500", "fail503", "throttle", "reset"])
def test_a_single_transient_failure_is_retried_invisibly(
    broker_for: Callable[[dict[str, float]], Flask],
    fault_aws: FaultProxy,
    aws: AwsWorld,
    exchange: Exchange,
    fault: Fault,
) -> None:
    app = broker_for(RETRY_TIMEOUTS)
    fault_aws.inject("AssumeRole", fault, times=1)

    response = exchange(app.test_client(), "corp", "ada")

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["credentials"]["access_key_id"]
    assert fault_aws.attempts("AssumeRole") == 2
    [call] = aws.recorder.calls("AssumeRole")
    assert call["RoleArn"] == aws.user_role_arn
    text = metrics_text(app)
    assert 'chime_broker_vends_total{exchange="sts",outcome="vended",provider="corp"} 1.0' in text
    assert "chime_broker_upstream_errors_total{" not in text


def test_a_flaky_upstream_under_eight_concurrent_clients_still_serves(
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    fault_aws: FaultProxy,
    aws: AwsWorld,
    oidc_provider: Any,
    broker_log: io.StringIO,
) -> None:
    oidc_provider.register_client(CLIENT_ID)
    for operation in (
        "AssumeRole",
        "GetOpenIdTokenForDeveloperIdentity",
        "GetCredentialsForIdentity",
    ):
        fault_aws.inject(operation, "flaky")
    server = live_broker(
        lambda url: make_config(
            providers=providers(oidc_provider.issuer),
            aws__timeouts=RETRY_TIMEOUTS,
            service__public_url=url,
        )
    )
    requests_total = 80
    tokens = [
        (
            "corp" if n % 2 else "dev",
            oidc_provider.mint_id_token({"sub": f"user{n}"}, audience=CLIENT_ID),
        )
        for n in range(requests_total)
    ]

    def exchange_one(entry: tuple[str, str]) -> int:
        provider, token = entry
        answer = requests.post(
            f"{server.url}/v1/token", json={"provider": provider, "id_token": token}, timeout=60
        )
        return answer.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(exchange_one, tokens))

    assert 500 not in statuses
    assert statuses.count(200) >= 0.95 * requests_total
    # The proxy failed every fifth call of each operation: retries made up for them.
    failed = sum(
        fault_aws.attempts(op) // 5
        for op in ("AssumeRole", "GetOpenIdTokenForDeveloperIdentity", "GetCredentialsForIdentity")
    )
    assert failed > 0
    log_records(broker_log)


# -- identity providers -------------------------------------------------------------------


def test_an_unreachable_identity_provider_is_a_503_logged_at_warning(
    make_app: MakeApp,
    oidc_provider: Any,
    closed_port: int,
    broker_log: io.StringIO,
) -> None:
    oidc_provider.register_client(CLIENT_ID)
    gone = f"http://127.0.0.1:{closed_port}"
    app = make_app(providers=providers(gone)[:1])
    token = oidc_provider.mint_id_token({"sub": "ada", "iss": gone}, audience=CLIENT_ID)

    response = app.test_client().post("/v1/token", json={"provider": "corp", "id_token": token})

    assert_refused(response, 503, "upstream_unavailable")
    warnings = logged_by(broker_log, "chime_broker.idp")
    assert warnings, "no warning for the unreachable identity provider"
    assert {r["level"] for r in warnings} == {"warning"}
    assert warnings[0]["operation"] == "discovery"
    assert warnings[0]["host"] == f"127.0.0.1:{closed_port}"
    assert warnings[0]["error_code"] == "ConnectionError"
    assert (
        'chime_broker_upstream_errors_total{code="connection",operation="discovery",'
        'upstream="idp"} 1.0' in metrics_text(app)
    )


@pytest.fixture
def silent_issuer() -> Iterator[str]:
    """An issuer URL whose server takes connections (the kernel's backlog) and never
    answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_an_identity_provider_that_hangs_is_a_504_after_one_read_timeout(
    make_app: MakeApp, oidc_provider: Any, silent_issuer: str, broker_log: io.StringIO
) -> None:
    oidc_provider.register_client(CLIENT_ID)
    app = make_app(providers=providers(silent_issuer)[:1], aws__timeouts=HANG_TIMEOUTS)
    token = oidc_provider.mint_id_token({"sub": "ada", "iss": silent_issuer}, audience=CLIENT_ID)

    response = app.test_client().post("/v1/token", json={"provider": "corp", "id_token": token})

    assert_refused(response, 504, "upstream_timeout")
    [warning] = logged_by(broker_log, "chime_broker.idp")
    assert (warning["level"], warning["operation"]) == ("warning", "discovery")
    assert warning["error_code"] == "ReadTimeout"
    assert (
        'chime_broker_upstream_errors_total{code="timeout",operation="discovery",'
        'upstream="idp"} 1.0' in metrics_text(app)
    )


def test_identity_provider_calls_are_timed_per_operation(
    broker_for: Callable[[dict[str, float]], Flask], exchange: Exchange
) -> None:
    app = broker_for(RETRY_TIMEOUTS)
    assert exchange(app.test_client(), "corp", "ada").status_code == 200
    text = metrics_text(app)
    for operation in ("discovery", "jwks"):
        assert (
            f'chime_broker_upstream_duration_seconds_count{{operation="{operation}",'
            'upstream="idp"} 1.0' in text
        )
    assert (
        'chime_broker_upstream_duration_seconds_count{operation="AssumeRole",upstream="aws"} 1.0'
        in text
    )
