"""The state store failing under a running broker: every failure is a 503
``upstream_unavailable`` with ``Retry-After`` (never a 500), ``/readyz`` is 503 meanwhile,
the broker serves again once the store is back, and the log holds one warning per interval
and no traceback.

Faults are real: a redis-server of the test's own, stopped, frozen (SIGSTOP), made a
read-only replica and restarted on its port; a loopback proxy in front of the moto
server's DynamoDB answering with the errors DynamoDB throttles and fails with (moto
itself never throttles); a SQLite file locked by another connection.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from identity import dynamodb_store
from identity.dynamodb_store import DynamoDbStore
from identity.errors import STORE_RETRY_AFTER, StoreError
from identity.redis_store import REDIS_CONNECT_TIMEOUT, REDIS_SOCKET_TIMEOUT, RedisStore
from identity.sqlite_store import SqliteStore
from identity.store import Store, open_store
from service.errors import STORE_FAULT_LOG_INTERVAL
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp
from tests.fixtures.live_server import LiveServer
from tests.fixtures.loopback import LoopbackServer
from tests.fixtures.redis_server import RedisServer, start_redis_server, stop_process
from tests.integration.test_browser_login import (
    Browser,
    assert_error_redirect,
    is_pre_login,
    set_cookies,
)
from tests.integration.test_browser_login import config_for as config_for
from tests.integration.test_sessions import CLIENT_ID, corp, refresh, start

FAULT_WARNING = "state store unavailable"


class RestartableRedis:
    """A redis-server of the test's own that can be stopped and started again on its port
    (empty again: it keeps nothing on disk)."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.server = self._started(None)
        self.url = self.server.url
        self.opened: list[Store] = []

    def store(self, options: str = "") -> Store:
        """A broker store on this server (closed by the fixture); ``options`` is the URL's
        query."""
        opened = open_store(self.url + options)
        self.opened.append(opened)
        return opened

    def _started(self, port: int | None) -> RedisServer:
        server = start_redis_server(self._workdir, port)
        assert server is not None, "redis-server lost the race for its port"
        return server

    def stop(self) -> None:
        stop_process(self.server.process)

    def restart(self) -> None:
        self.stop()
        self.server = self._started(self.server.port)

    def raw(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    try:
        yield server
    finally:
        for store in server.opened:
            store.close()
        server.stop()


@pytest.fixture
def store_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="chime_broker")
    return caplog


def assert_store_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "upstream_unavailable"
    assert "credentials" not in body and "broker_session" not in body
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER)


def fault_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == FAULT_WARNING]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    broker_records = [r for r in caplog.records if r.name.startswith("chime_broker")]
    assert [r for r in broker_records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert not any("Traceback" in r.getMessage() for r in broker_records)
    for record in fault_warnings(caplog):
        assert record.levelno == logging.WARNING


def mobile_login(client: FlaskClient, idp: Any) -> Any:
    token = idp.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    return client.post("/v1/token", json={"provider": "corp", "id_token": token})


# --------------------------------------------------------------------------- redis


def test_the_redis_client_uses_the_bounded_timeouts(redis_url: str) -> None:
    store = open_store(redis_url)
    try:
        assert isinstance(store, RedisStore)
        settings = store._client.connection_pool.connection_kwargs
        assert settings["socket_connect_timeout"] == REDIS_CONNECT_TIMEOUT
        assert settings["socket_timeout"] == REDIS_SOCKET_TIMEOUT
        assert REDIS_CONNECT_TIMEOUT + REDIS_SOCKET_TIMEOUT <= 5
    finally:
        store.close()


def test_redis_stopped_and_restarted_under_a_running_broker(
    own_redis: RestartableRedis,
    make_app: MakeApp,
    aws: Any,
    oidc_provider: Any,
    clock: FakeClock,
    store_log: pytest.LogCaptureFixture,
) -> None:
    app = make_app(**corp(oidc_provider, "sts"), store=own_redis.store(), clock=clock)
    client = app.test_client()
    token = start(client, oidc_provider)["broker_session"]["token"]
    assert refresh(client, token).status_code == 200

    own_redis.stop()
    aws.recorder.reset()
    # Each request returns (within the store's timeouts) with a 503, never a 500.
    assert_store_unavailable(refresh(client, token))
    assert_store_unavailable(mobile_login(client, oidc_provider))
    assert_store_unavailable(client.get("/readyz"))
    assert client.get("/healthz").status_code == 200
    assert aws.recorder.operations().count("AssumeRole") == 0
    assert len(fault_warnings(store_log)) == 1

    clock.advance(STORE_FAULT_LOG_INTERVAL + 1)
    assert_store_unavailable(client.get("/readyz"))
    warnings = fault_warnings(store_log)
    assert len(warnings) == 2
    assert warnings[1].fields["failures_not_logged"] == 2  # type: ignore[attr-defined]
    assert "Connection refused" in warnings[1].fields["reason"]  # type: ignore[attr-defined]

    # Back, and empty: the broker serves again with the same store object; the session
    # lost with the data is a 401.
    own_redis.restart()
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_data(as_text=True)
    lost = refresh(client, token)
    assert lost.status_code == 401
    assert lost.get_json()["code"] == "unauthenticated"
    again = start(client, oidc_provider)["broker_session"]["token"]
    assert refresh(client, again).status_code == 200
    assert_no_traceback(store_log)


def test_a_browser_sign_in_meeting_a_failed_store_goes_back_to_the_app(
    own_redis: RestartableRedis,
    live_broker: Callable[..., LiveServer],
    aws: Any,
    oidc_provider: Any,
    clock: FakeClock,
    config_for: Callable[..., Any],
    store_log: pytest.LogCaptureFixture,
) -> None:
    server = live_broker(
        lambda url: config_for(url, {"okta": oidc_provider}), store=own_redis.store(), clock=clock
    )
    browser = Browser(server)
    own_redis.stop()
    # A login start touches no store: it works with the store down.
    callback = browser.authorize(oidc_provider, browser.begin("okta"))

    answer = browser.get(callback)
    # The transaction is known (it is in the browser's cookie): back to the app with the
    # error, its cookie removed, no session, nothing sent to AWS, no traceback.
    assert_error_redirect(answer, "upstream_unavailable")
    assert [name for name, value in set_cookies(answer).items() if is_pre_login(name) and value]
    assert not [c for c in browser.http.cookies if is_pre_login(c.name)]
    assert aws.recorder.requests() == []
    assert_no_traceback(store_log)

    own_redis.restart()
    signed_in = browser.login(oidc_provider)
    assert signed_in.status_code == 302
    assert browser.cookie() is not None


def test_a_hung_redis_is_a_503_once_its_socket_timeout_passes(
    own_redis: RestartableRedis,
    make_app: MakeApp,
    aws: Any,
    oidc_provider: Any,
    store_log: pytest.LogCaptureFixture,
) -> None:
    # The production timeout is REDIS_SOCKET_TIMEOUT; a short one keeps the test quick.
    app = make_app(**corp(oidc_provider, "sts"), store=own_redis.store("?socket_timeout=0.3"))
    client = app.test_client()
    token = start(client, oidc_provider)["broker_session"]["token"]

    os.kill(own_redis.server.process.pid, signal.SIGSTOP)
    try:
        assert_store_unavailable(refresh(client, token))
        assert_store_unavailable(client.get("/readyz"))
    finally:
        os.kill(own_redis.server.process.pid, signal.SIGCONT)
    assert "Timeout" in fault_warnings(store_log)[0].fields["reason"]  # type: ignore[attr-defined]
    assert refresh(client, token).status_code == 200
    assert_no_traceback(store_log)


def test_a_read_only_replica_refuses_writes_with_a_503(
    own_redis: RestartableRedis,
    make_app: MakeApp,
    aws: Any,
    oidc_provider: Any,
    closed_port: int,
    store_log: pytest.LogCaptureFixture,
) -> None:
    app = make_app(**corp(oidc_provider, "sts"), store=own_redis.store())
    client = app.test_client()
    raw = own_redis.raw()
    try:
        # A replica of a primary that is not there: it keeps serving reads, refuses writes.
        raw.replicaof("127.0.0.1", closed_port)
        assert_store_unavailable(mobile_login(client, oidc_provider))
        assert "read only replica" in fault_warnings(store_log)[0].fields["reason"]  # type: ignore[attr-defined]
        raw.replicaof("NO", "ONE")
    finally:
        raw.close()
    assert mobile_login(client, oidc_provider).status_code == 200
    assert_no_traceback(store_log)


# --------------------------------------------------------------------------- dynamodb


class DynamoDbFaults:
    """A WSGI proxy in front of the moto server's DynamoDB: while ``failing`` holds a
    status and an error code, every request is answered with that error, as DynamoDB
    answers when it throttles or fails; else it is passed on. ``seen`` lists the
    operations of every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.failing: tuple[int, str] | None = None
        self.seen: list[str] = []
        self._http = requests.Session()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        self.seen.append(target.rsplit(".", 1)[-1])
        if self.failing is not None:
            status, code = self.failing
            error = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": code}
            start_response(f"{status} Error", [("Content-Type", "application/x-amz-json-1.0")])
            return [json.dumps(error).encode()]
        headers = {
            name[5:].replace("_", "-").title(): value
            for name, value in environ.items()
            if name.startswith("HTTP_") and name not in ("HTTP_HOST", "HTTP_CONTENT_LENGTH")
        }
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
        answer = self._http.post(
            self.upstream + environ.get("PATH_INFO", "/"), data=body, headers=headers, timeout=30
        )
        start_response(
            f"{answer.status_code} {answer.reason}",
            [("Content-Type", answer.headers.get("Content-Type", "application/json"))],
        )
        return [answer.content]


@pytest.fixture
def dynamodb_faults(
    aws: Any, dynamodb_store_url: str, monkeypatch: pytest.MonkeyPatch, instant_backoff: None
) -> Iterator[tuple[DynamoDbFaults, DynamoDbStore]]:
    """The proxy, and a store on a fresh table whose client reaches DynamoDB through it."""
    faults = DynamoDbFaults(aws.endpoint_url)
    server = LoopbackServer(faults, name="dynamodb-faults")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", f"http://127.0.0.1:{server.port}")
    store = DynamoDbStore(dynamodb_store_url.split("://", 1)[1], region=aws.region)
    try:
        yield faults, store
    finally:
        store.close()
        server.stop()


DYNAMODB_FAULTS = [
    (400, "ThrottlingException"),
    (400, "ProvisionedThroughputExceededException"),
    (400, "RequestLimitExceeded"),
    (500, "InternalServerError"),
    (503, "ServiceUnavailable"),
]


@pytest.mark.parametrize(("status", "code"), DYNAMODB_FAULTS)
def test_dynamodb_throttling_and_outages_are_store_errors_after_bounded_retries(
    dynamodb_faults: tuple[DynamoDbFaults, DynamoDbStore], status: int, code: str
) -> None:
    faults, store = dynamodb_faults
    store.set("session:x", b"kept", 30)
    faults.failing = (status, code)
    faults.seen.clear()
    with pytest.raises(StoreError, match=code):
        store.get("session:x")
    assert faults.seen == ["GetItem"] * dynamodb_store.MAX_ATTEMPTS
    faults.failing = None
    assert store.get("session:x") == b"kept"


def test_the_dynamodb_client_uses_the_bounded_timeouts(
    dynamodb_faults: tuple[DynamoDbFaults, DynamoDbStore],
) -> None:
    _, store = dynamodb_faults
    store.ping()
    config: Any = store._connection().meta.config
    assert config.connect_timeout == dynamodb_store.CONNECT_TIMEOUT
    assert config.read_timeout == dynamodb_store.READ_TIMEOUT
    assert config.retries == {"mode": "standard", "total_max_attempts": dynamodb_store.MAX_ATTEMPTS}


def test_a_throttled_dynamodb_table_under_a_running_broker(
    dynamodb_faults: tuple[DynamoDbFaults, DynamoDbStore],
    make_app: MakeApp,
    aws: Any,
    oidc_provider: Any,
    store_log: pytest.LogCaptureFixture,
) -> None:
    faults, store = dynamodb_faults
    app: Flask = make_app(**corp(oidc_provider, "sts"), store=store)
    client = app.test_client()
    token = start(client, oidc_provider)["broker_session"]["token"]

    faults.failing = (400, "ProvisionedThroughputExceededException")
    aws.recorder.reset()
    assert_store_unavailable(refresh(client, token))
    assert_store_unavailable(client.get("/readyz"))
    assert "AssumeRole" not in aws.recorder.operations()
    assert len(fault_warnings(store_log)) == 1

    faults.failing = None
    assert client.get("/readyz").status_code == 200
    assert refresh(client, token).status_code == 200
    assert_no_traceback(store_log)


# --------------------------------------------------------------------------- sqlite


def test_a_locked_sqlite_file_is_a_store_error_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(str(path), busy_timeout=0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        store.set("k", b"before", 30)
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            store.set("k", b"during", 30)
        holder.execute("ROLLBACK")
        store.set("k", b"after", 30)
        assert store.get("k") == b"after"
    finally:
        holder.close()
        store.close()
