"""The ``chime-broker`` command as an admin runs it: ``check`` on every broken config,
``serve`` under gunicorn with gevent workers, and the refusals that protect production."""

from __future__ import annotations

import email.utils
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from service.cli import main
from tests.conftest import free_port
from tests.fixtures.serve import corp_config, serving, vend_as_ada, wait_for
from tests.unit.test_config import BASE, BROKEN, EXAMPLE_ENV

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("chime-broker"))
SECRET = "k" * 40


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_check_exits_1_and_prints_every_problem(
    text: str,
    expected: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_SECRET_KEY", SECRET)
    path = tmp_path / "broker.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", str(path)])
    assert exit_info.value.code == 1
    printed = capsys.readouterr().err
    for problem in expected:
        assert problem.replace("<config>", str(path)) in printed


def test_check_builds_the_example_config_as_serve_would_as_a_real_process() -> None:
    """With placeholder secrets and none of its files on this machine, the example config
    validates but cannot serve: check says why, for every problem at once, with lines."""
    result = subprocess.run(
        [CLI, "check", "--config", str(REPO / "config" / "example.yaml")],
        env={**os.environ, **EXAMPLE_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        "  store (line 104): the directory of the SQLite file does not exist: "
        "/var/lib/chime-broker",
        "  providers[2].private_key (line 196): not a PEM key",
        "  providers[6].sp_key (line 241): not an unencrypted PEM private key",
    ]
    assert "Traceback" not in result.stderr


def test_check_refuses_a_broken_config_as_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BASE.replace("exchange: cognito_developer", "exchange: vault", 1))
    result = subprocess.run(
        [CLI, "check", "--config", str(path)],
        env={**os.environ, "BROKER_SECRET_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "providers[0].exchange" in result.stderr
    assert result.stdout == ""


def serve_config(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(
        BASE.replace("store: memory://", f"store: {store}").replace(
            "public_url: https://auth.example.chat", "public_url: https://auth.example.chat"
        )
    )
    return path


def test_serve_refuses_memory_store_with_several_workers(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            CLI,
            "serve",
            "--config",
            str(serve_config(tmp_path, "memory://")),
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{free_port()}",
        ],
        env={**os.environ, "BROKER_SECRET_KEY": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "memory://" in result.stderr


def test_demo_binds_loopback_only() -> None:
    assert main(["demo", "--host", "0.0.0.0"]) == 2


def test_serve_runs_gunicorn_gevent_workers_that_share_one_store(tmp_path: Path) -> None:
    port = free_port()
    config = serve_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    process = subprocess.Popen(
        [CLI, "serve", "--config", str(config), "--workers", "2", "--bind", f"127.0.0.1:{port}"],
        env={
            **os.environ,
            "BROKER_SECRET_KEY": SECRET,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(f"{base}/healthz", process).json() == {"status": "ok"}
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        answer = requests.get(f"{base}/v1/providers", timeout=5)
        providers = answer.json()
        assert providers[0]["login_url"] == "https://auth.example.chat/v1/login/okta"
        # the worker's once-a-second Date header is the current time, in HTTP's format
        sent = email.utils.parsedate_to_datetime(answer.headers["Date"])
        assert answer.headers["Date"].endswith(" GMT")
        assert abs(sent.timestamp() - time.time()) < 5
        for _ in range(20):
            requests.get(f"{base}/v1/providers", timeout=5)
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        # The exposition merges both workers' counters.
        count = next(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("chime_broker_requests_total{") and 'route="/v1/providers"' in line
        )
        assert count == 21.0
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "gevent" in stderr.lower()


def test_serve_vends_through_botocore_inside_gevent_workers(
    tmp_path: Path, aws: Any, oidc_provider: Any
) -> None:
    """The workers patch ssl before botocore is imported: an AWS call from a gevent worker
    must work, not die in a RecursionError inside ssl."""
    config = corp_config(aws, oidc_provider, tmp_path)
    with serving(CLI, config, workers=2, env=dict(os.environ)) as (base, stderr):
        vend_as_ada(base, aws, oidc_provider)
    assert "RecursionError" not in stderr[0]
