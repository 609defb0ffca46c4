"""``chime-broker sessions revoke`` and ``sessions list`` against brokers that share a store:
two apps, each with its own store object on the same SQLite file or Redis database, sessions
opened with id tokens from the local OIDC provider, credentials from the moto server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from identity.store import MemoryStore, Store, open_store
from identity.vending.sts import role_session_name
from service.cli import main
from tests.fixtures.apps import MakeApp, broker_config_dict
from tests.fixtures.counting_store import CountingStore

CORP_CLIENT = "mobile-app"
DEV_CLIENT = "dev-app"


def config_dict(aws: Any, idp: Any, store_url: str) -> dict[str, Any]:
    """Two providers on the local IdP: ``corp`` vends with STS, ``dev`` with Cognito
    developer identities; sessions of an hour."""
    return broker_config_dict(
        aws,
        store=store_url,
        aws__sts__duration_seconds=3600,
        service__session_lifetime="1h",
        providers=[
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": CORP_CLIENT,
                "exchange": "sts",
                "map": {"user_id": "corp-{sub}"},
            },
            {
                "name": "dev",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": DEV_CLIENT,
                "exchange": "cognito_developer",
                "map": {"user_id": "dev-{sub}"},
            },
        ],
    )


class Rig:
    """Two brokers sharing one store, and the config file an operator would pass."""

    def __init__(
        self, make_app: MakeApp, aws: Any, idp: Any, store_url: str, tmp_path: Path
    ) -> None:
        from identity.config.document import build_config

        document = config_dict(aws, idp, store_url)
        self.path = tmp_path / "broker.yaml"
        self.path.write_text(yaml.safe_dump(document))
        self.config = build_config(document)
        self.apps: list[Flask] = [make_app(self.config), make_app(self.config)]
        self.idp = idp
        idp.register_client(CORP_CLIENT)
        idp.register_client(DEV_CLIENT)

    def client(self, n: int) -> FlaskClient:
        return self.apps[n].test_client()

    def start(self, n: int, sub: str, provider: str = "corp") -> str:
        audience = CORP_CLIENT if provider == "corp" else DEV_CLIENT
        id_token = self.idp.mint_id_token({"sub": sub}, audience=audience, lifetime=3600)
        response = self.client(n).post(
            "/v1/token", json={"provider": provider, "id_token": id_token}
        )
        assert response.status_code == 200, response.get_json()
        token: str = response.get_json()["broker_session"]["token"]
        return token

    def refresh_status(self, n: int, token: str) -> int:
        response = self.client(n).post(
            "/v1/credentials", headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code == 401:
            assert response.get_json()["code"] == "unauthenticated"
            assert "credentials" not in response.get_json()
        return response.status_code

    def store(self, n: int) -> Store:
        store: Store = self.apps[n].extensions["chime_broker"].store
        return store


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Run ``chime-broker`` in process; (exit status, parsed stdout or None, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, (json.loads(out) if status == 0 and out.strip() else None), err


@pytest.fixture(params=["sqlite", "redis"])
def rig(
    request: pytest.FixtureRequest,
    make_app: MakeApp,
    aws: Any,
    oidc_provider: Any,
    tmp_path: Path,
) -> Rig:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    return Rig(make_app, aws, oidc_provider, url, tmp_path)


def test_revoking_a_user_ends_their_sessions_on_every_broker_and_only_theirs(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    alice_0, alice_1 = rig.start(0, "alice"), rig.start(1, "alice")
    bob = rig.start(0, "bob")
    assert [rig.refresh_status(1, alice_0), rig.refresh_status(0, alice_1)] == [200, 200]
    assert rig.refresh_status(1, bob) == 200

    status, listed, _ = cli(
        capsys, "sessions", "list", "--config", str(rig.path), "--user", "corp-alice"
    )
    assert status == 0
    assert listed["count"] == 2
    assert [s["provider"] for s in listed["sessions"]] == ["corp", "corp"]
    assert all(s["created_at"].endswith("Z") for s in listed["sessions"])
    assert "token" not in json.dumps(listed)

    broker = rig.apps[0].extensions["chime_broker"].broker
    cache_key = broker.user_cache_key(rig.config.provider("corp"), "corp-alice")
    assert rig.store(1).get(cache_key) is not None  # cached by the refresh above

    status, report, _ = cli(
        capsys, "sessions", "revoke", "--config", str(rig.path), "--user", "corp-alice"
    )
    assert status == 0
    assert report["ended_sessions"] == 2
    assert report["dropped_credentials"] == 1  # one entry per user, shared by both sessions
    assert report["revoked"]["user_id"] == "corp-alice"
    statements = report["deny_policy"]["Statement"]
    sts = [s for s in statements if "aws:SourceIdentity" in s["Condition"].get("StringEquals", {})]
    assert len(sts) == 1
    assert sts[0]["Effect"] == "Deny" and sts[0]["Action"] == "*" and sts[0]["Resource"] == "*"
    assert sts[0]["Condition"]["StringEquals"] == {
        "aws:SourceIdentity": role_session_name("corp-alice")
    }
    issued_before = sts[0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
    assert issued_before.endswith("Z") and issued_before >= report["revoked"]["at"]

    for n in (0, 1):
        assert rig.refresh_status(n, alice_0) == 401
        assert rig.refresh_status(n, alice_1) == 401
        assert rig.refresh_status(n, bob) == 200
    assert rig.store(0).get(cache_key) is None

    status, listed, _ = cli(
        capsys, "sessions", "list", "--config", str(rig.path), "--user", "corp-alice"
    )
    assert (status, listed["count"]) == (0, 0)
    # a login after the revocation is a new session, and works
    assert rig.refresh_status(1, rig.start(0, "alice")) == 200


def test_the_deny_statement_of_a_cognito_developer_user_names_the_user_tag(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = rig.start(0, "carol", provider="dev")
    assert rig.refresh_status(1, dev) == 200
    status, report, _ = cli(
        capsys,
        "sessions",
        "revoke",
        "--config",
        str(rig.path),
        "--user",
        "dev-carol",
        "--provider",
        "dev",
    )
    assert status == 0
    [statement] = report["deny_policy"]["Statement"]
    tag = rig.config.chime.user_tag
    assert statement["Condition"]["StringEquals"] == {f"aws:PrincipalTag/{tag}": "dev-carol"}
    assert set(statement["Condition"]) == {"DateLessThan", "StringEquals"}
    assert rig.refresh_status(1, dev) == 401


def test_revoking_a_provider_or_everything(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = rig.start(0, "alice"), rig.start(1, "bob")
    carol = rig.start(1, "carol", provider="dev")

    status, report, _ = cli(
        capsys, "sessions", "revoke", "--config", str(rig.path), "--provider", "corp"
    )
    assert status == 0
    [statement] = report["deny_policy"]["Statement"]
    assert set(statement["Condition"]) == {"DateLessThan"}
    assert [rig.refresh_status(1, alice), rig.refresh_status(0, bob)] == [401, 401]
    assert rig.refresh_status(0, carol) == 200
    later = rig.start(1, "alice")
    assert rig.refresh_status(0, later) == 200

    status, report, _ = cli(capsys, "sessions", "revoke", "--config", str(rig.path), "--all")
    assert status == 0
    assert set(report["deny_policy"]["Statement"][0]["Condition"]) == {"DateLessThan"}
    for token in (later, carol):
        assert rig.refresh_status(0, token) == 401
        assert rig.refresh_status(1, token) == 401


def test_errors_are_messages_not_tracebacks(
    rig: Rig, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = str(rig.path)
    status, _, err = cli(
        capsys, "sessions", "revoke", "--config", config, "--user", "x", "--provider", "nope"
    )
    assert status == 2 and "unknown provider 'nope'" in err
    status, _, err = cli(capsys, "sessions", "revoke", "--config", config)
    assert status == 2 and "give --user, --provider or --all" in err
    status, _, err = cli(capsys, "sessions", "revoke", "--config", config, "--all", "--user", "x")
    assert status == 2 and "--all takes neither" in err
    status, _, err = cli(capsys, "sessions", "list", "--config", config)
    assert status == 2 and "--user" in err
    status, _, err = cli(
        capsys, "sessions", "list", "--config", str(tmp_path / "none.yaml"), "--user", "x"
    )
    assert status == 1 and err

    memory = yaml.safe_load(rig.path.read_text())
    memory["store"] = "memory://"
    memory_path = tmp_path / "memory.yaml"
    memory_path.write_text(yaml.safe_dump(memory))
    status, _, err = cli(capsys, "sessions", "revoke", "--config", str(memory_path), "--all")
    assert status == 1 and "memory://" in err


@pytest.mark.parametrize("command", ["revoke", "list"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sessions", command, "--help"])
    assert exit_info.value.code == 0
    assert f"chime-broker sessions {command} --config broker.yaml" in capsys.readouterr().out


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = open_store(f"sqlite:///{tmp_path / 'many.db'}")
    else:
        store = open_store(request.getfixturevalue("redis_url"))
    yield store
    store.close()


def test_get_many_reads_values_in_order_with_absent_ones_as_none(any_store: Store) -> None:
    any_store.set("a", b"1", 60)
    any_store.set("b", b"2", 60)
    any_store.set("gone", b"3", 0.001)
    import time

    time.sleep(0.01)
    assert any_store.get_many(["b", "missing", "a", "gone", "b"]) == [b"2", None, b"1", None, b"2"]
    assert any_store.get_many([]) == []


def test_a_refresh_reads_the_store_twice_markers_and_cached_credentials_together(
    make_app: MakeApp, aws: Any, oidc_provider: Any, tmp_path: Path
) -> None:
    from identity.config.document import build_config

    store = CountingStore(open_store(f"sqlite:///{tmp_path / 'count.db'}"))
    config = build_config(config_dict(aws, oidc_provider, "memory://"))
    app = make_app(config, store=store)  # type: ignore[arg-type]
    oidc_provider.register_client(CORP_CLIENT)
    id_token = oidc_provider.mint_id_token({"sub": "dave"}, audience=CORP_CLIENT, lifetime=3600)
    client = app.test_client()
    token = client.post("/v1/token", json={"provider": "corp", "id_token": id_token}).get_json()[
        "broker_session"
    ]["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/credentials", headers=bearer).status_code == 200
    store.calls.clear()
    assert client.post("/v1/credentials", headers=bearer).status_code == 200
    # the session; then the markers and the cached credentials in one read
    assert store.calls == ["get", "get_many"]
    store.inner.close()


def test_the_installed_command_revokes_as_a_real_process(rig: Rig) -> None:
    import os
    import subprocess
    import sys

    token = rig.start(0, "frank")
    command = str(Path(sys.executable).with_name("chime-broker"))
    result = subprocess.run(
        [command, "sessions", "revoke", "--config", str(rig.path), "--user", "corp-frank"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["ended_sessions"] == 1
    assert rig.refresh_status(1, token) == 401


@pytest.mark.slow
def test_revoke_ends_a_users_sessions_on_two_serve_processes(
    aws: Any, oidc_provider: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ``chime-broker serve`` processes on one SQLite file: a user's two sessions, one
    opened on each, end at once; another user's session keeps working."""
    import os
    import signal
    import subprocess
    import sys

    import requests

    from tests.conftest import free_port
    from tests.fixtures.serve import wait_for

    document = config_dict(aws, oidc_provider, f"sqlite:///{tmp_path / 'state.db'}")
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    oidc_provider.register_client(CORP_CLIENT)
    cli = str(Path(sys.executable).with_name("chime-broker"))
    bases: list[str] = []
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            port = free_port()
            processes.append(
                subprocess.Popen(
                    [
                        cli,
                        "serve",
                        "--config",
                        str(path),
                        "--workers",
                        "1",
                        "--bind",
                        f"127.0.0.1:{port}",
                    ],
                    env=dict(os.environ),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        for base, process in zip(bases, processes, strict=True):
            wait_for(f"{base}/healthz", process)

        def start(base: str, sub: str) -> str:
            id_token = oidc_provider.mint_id_token(
                {"sub": sub}, audience=CORP_CLIENT, lifetime=3600
            )
            answer = requests.post(
                f"{base}/v1/token", json={"provider": "corp", "id_token": id_token}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            token: str = answer.json()["broker_session"]["token"]
            return token

        def refresh(base: str, token: str) -> int:
            return requests.post(
                f"{base}/v1/credentials",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).status_code

        alice = [start(bases[0], "alice"), start(bases[1], "alice")]
        bob = start(bases[1], "bob")
        assert [refresh(bases[1], alice[0]), refresh(bases[0], alice[1])] == [200, 200]

        assert main(["sessions", "revoke", "--config", str(path), "--user", "corp-alice"]) == 0
        capsys.readouterr()

        assert [refresh(base, token) for base in bases for token in alice] == [401] * 4
        assert [refresh(base, bob) for base in bases] == [200, 200]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
