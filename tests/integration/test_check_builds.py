"""``check`` builds what ``serve`` builds from the config's own files and keys: a config
that validates but cannot start is refused by ``check``, ``serve`` and ``wsgi.py`` alike,
with every problem and its YAML path in one report, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.cli.config_file import APP_LOAD_ERROR
from tests.fixtures.configs import SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("chime-broker"))

CANNOT_START = """\
aws:
  region: us-east-1
  sts: {{role_arn: "arn:aws:iam::111122223333:role/ChimeUser"}}
chime: {{app_instance_arn: "arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234"}}
service:
  public_url: https://auth.example.chat
  secret_key: {secret}
  allowed_return_to: [https://app.example.chat/]
store: sqlite:///{missing}/state.db
providers:
  - name: apple
    kind: apple
    client_ids: [com.example.chat]
    team_id: ABCDE12345
    key_id: FGHIJ67890
    private_key: "-----BEGIN PRIVATE KEY----- not really"
    exchange: sts
    map: {{user_id: "apple-{{sub}}"}}
  - name: corp
    kind: saml
    idp_metadata_file: {missing}/corp-idp.xml
    sp_entity_id: https://auth.example.chat/v1/saml/corp/metadata
    exchange: sts
    map: {{user_id: "corp-{{name_id}}"}}
"""

EXPECTED = [
    "store (line 9): the directory of the SQLite file does not exist: {missing}",
    "providers[0].private_key (line 16): not a PEM key",
    "providers[1].idp_metadata_file (line 21): cannot read {missing}/corp-idp.xml: "
    "No such file or directory",
]


@pytest.fixture
def config_file(tmp_path: Path) -> tuple[Path, list[str]]:
    missing = tmp_path / "not-there"
    path = tmp_path / "broker.yaml"
    path.write_text(CANNOT_START.format(secret=SECRET_KEY, missing=missing))
    report = [f"{path}: 3 problem(s)", *("  " + e.format(missing=missing) for e in EXPECTED)]
    return path, report


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_check_refuses_every_problem_at_once_with_yaml_paths(
    config_file: tuple[Path, list[str]],
) -> None:
    path, report = config_file
    result = run(CLI, "check", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-len(report) :] == report
    assert result.stdout == ""


def test_serve_exits_with_the_same_report(config_file: tuple[Path, list[str]]) -> None:
    path, report = config_file
    result = run(CLI, "serve", "--config", str(path), "--bind", "127.0.0.1:0", "--workers", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-len(report) :] == report
    assert "Traceback" not in result.stdout + result.stderr


def test_wsgi_exits_with_the_same_report(config_file: tuple[Path, list[str]]) -> None:
    path, report = config_file
    result = run(sys.executable, "-c", "import wsgi", env={"BROKER_CONFIG": str(path)})
    assert result.returncode == APP_LOAD_ERROR
    assert result.stderr.splitlines()[-len(report) :] == report
    assert "Traceback" not in result.stderr


def test_a_saml_key_that_is_not_pem_is_found_by_check(tmp_path: Path) -> None:
    metadata = tmp_path / "idp.xml"
    metadata.write_text("<not-metadata/>")
    text = CANNOT_START.format(secret=SECRET_KEY, missing=tmp_path).replace(
        f"idp_metadata_file: {tmp_path}/corp-idp.xml",
        f"idp_metadata_file: {metadata}\n    sp_key: not-a-key\n    sp_cert: not-a-cert",
    )
    path = tmp_path / "broker.yaml"
    path.write_text(text)
    result = run(CLI, "check", "--config", str(path))
    assert result.returncode == 1
    assert "  providers[1].sp_key (line 22): not an unencrypted PEM private key" in (
        result.stderr.splitlines()
    )


OFFLINE = """\
aws:
  region: {region}
  sts: {{role_arn: "arn:aws:iam::111122223333:role/ChimeUser"}}
chime: {{app_instance_arn: "arn:aws:chime:us-east-1:111122223333:app-instance/abcd-1234"}}
service:
  public_url: https://auth.example.chat
  secret_key: ${{env:CI_HAS_NO_SECRET_KEY}}
store: memory://
providers:
  - name: apple
    kind: apple
    client_ids: [com.example.chat]
    team_id: ABCDE12345
    key_id: FGHIJ67890
    private_key: ${{env:CI_HAS_NO_APPLE_KEY}}
    exchange: sts
    map: {{user_id: "apple-{{sub}}"}}
"""


@pytest.fixture
def secretless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CI_HAS_NO_SECRET_KEY", raising=False)
    monkeypatch.delenv("CI_HAS_NO_APPLE_KEY", raising=False)
    path = tmp_path / "broker.yaml"
    path.write_text(OFFLINE.format(region="us-east-1"))
    return path


def test_check_without_the_secrets_names_each_missing_one(
    secretless: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "--config", str(secretless)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  service.secret_key (line 7): environment variable 'CI_HAS_NO_SECRET_KEY' is not set",
        "  providers[0].private_key (line 15): environment variable 'CI_HAS_NO_APPLE_KEY' "
        "is not set",
    ]


def test_check_offline_takes_missing_secrets_as_placeholders(
    secretless: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--offline", "--config", str(secretless)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{secretless}: ok\n")
    assert out.rstrip().endswith(
        "offline: not resolved, and not checked beyond their syntax: "
        "providers[0].private_key, service.secret_key"
    )


def test_check_offline_still_reports_everything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI_HAS_NO_SECRET_KEY", raising=False)
    monkeypatch.delenv("CI_HAS_NO_APPLE_KEY", raising=False)
    path = tmp_path / "broker.yaml"
    path.write_text(OFFLINE.format(region="mars-north-1x"))
    with pytest.raises(SystemExit) as exited:
        main(["check", "--offline", "--config", str(path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  aws.region (line 2): 'mars-north-1x' is not an AWS region such as 'us-east-1'"
    ]


def test_policies_offline_prints_the_documents(
    secretless: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policies", "--offline", "--config", str(secretless)]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert documents


def test_demo_reports_a_broken_config_like_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text((REPO / "config" / "demo.yaml").read_text() + "unknown_section: {}\n")
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--config", str(path), "--port", "0", "--idp-port", "0"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}: 1 problem(s)"
    assert err[1].startswith("  unknown_section (line ")
    assert err[1].endswith("): unknown key")
