"""``${ssm:…}`` and ``${secretsmanager:…}`` in the config, read from the moto server when the
config is loaded: decrypted values, one read per parameter or secret, every failure a
problem of its key (never a traceback, never the value), and nothing read offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from identity.config.document import BrokerConfig, load_config
from identity.errors import ConfigError
from identity.providers.oidc import OidcConfig
from service.cli import main
from tests.conftest import free_port
from tests.fixtures.apps import broker_config_dict
from tests.fixtures.configs import provider_dict
from tests.fixtures.moto_server import AwsWorld

CLI = str(Path(sys.executable).with_name("chime-broker"))
SSM_VALUE = "ssm-secret-key-value-0123456789abcdefghij"
CLIENT_SECRET = "idp-client-secret-value-9876543210"
SECRET_JSON = json.dumps({"client_secret": CLIENT_SECRET, "client_id": "web-app", "n": 7})

Put = Callable[..., None]


@pytest.fixture
def put(aws: AwsWorld) -> Iterator[Put]:
    """``put(ssm=(name, value))`` or ``put(secret=(name, string))``: created in the moto
    world for this test and deleted afterwards; the recording starts after the last one."""
    ssm, secrets = aws.client("ssm"), aws.client("secretsmanager")
    parameters: list[str] = []
    names: list[str] = []

    def create(*, ssm_parameter: tuple[str, str] | None = None, secret: Any = None) -> None:
        if ssm_parameter is not None:
            name, value = ssm_parameter
            ssm.put_parameter(Name=name, Value=value, Type="SecureString")
            parameters.append(name)
        if secret is not None:
            name, string = secret
            secrets.create_secret(Name=name, SecretString=string)
            names.append(name)
        aws.recorder.reset()

    yield create
    for name in parameters:
        ssm.delete_parameter(Name=name)
    for name in names:
        secrets.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def write_config(tmp_path: Path, aws: AwsWorld, **overrides: Any) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(broker_config_dict(aws, **overrides), sort_keys=False))
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of ``path`` holding ``needle`` (once)."""
    lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value.problems


def oidc_with_secret(reference: str) -> list[dict[str, Any]]:
    return [provider_dict("oidc", client_secret=reference)]


def oidc(config: BrokerConfig) -> OidcConfig:
    provider = config.providers[0]
    assert isinstance(provider, OidcConfig)
    return provider


def secret_key(config: BrokerConfig) -> str:
    key = config.service.secret_key
    assert key is not None and not isinstance(key, tuple)
    return key.get_secret_value()


def test_a_config_loads_with_the_decrypted_parameter_and_the_json_key(
    tmp_path: Path, aws: AwsWorld, put: Put
) -> None:
    put(ssm_parameter=("/broker/secret", SSM_VALUE), secret=("broker/idp", SECRET_JSON))
    path = write_config(
        tmp_path,
        aws,
        service__secret_key="${ssm:/broker/secret}",
        providers=oidc_with_secret("${secretsmanager:broker/idp#client_secret}"),
    )

    config = load_config(path)

    assert secret_key(config) == SSM_VALUE
    client_secret = oidc(config).client_secret
    assert client_secret is not None and client_secret.get_secret_value() == CLIENT_SECRET
    assert aws.recorder.calls("GetParameter") == [
        {"Name": "/broker/secret", "WithDecryption": True}
    ]
    assert aws.recorder.calls("GetSecretValue") == [{"SecretId": "broker/idp"}]
    assert {r.region for r in aws.recorder.requests()} == {aws.region}


def test_each_parameter_and_secret_is_read_once_per_load(
    tmp_path: Path, aws: AwsWorld, put: Put
) -> None:
    put(ssm_parameter=("/broker/secret", SSM_VALUE), secret=("broker/idp", SECRET_JSON))
    path = write_config(
        tmp_path,
        aws,
        service__secret_key=["${ssm:/broker/secret}", "${ssm:/broker/secret}"],
        providers=[
            provider_dict(
                "oidc",
                client_id="${secretsmanager:broker/idp#client_id}",
                client_secret="${secretsmanager:broker/idp#client_secret}",
            )
        ],
    )

    config = load_config(path)

    assert oidc(config).client_id == "web-app"
    assert sorted(aws.recorder.operations(), key=str) == ["GetParameter", "GetSecretValue"]
    load_config(path)
    assert len(aws.recorder.calls("GetParameter")) == 2, "read again by the next load"


def test_the_region_may_come_from_the_environment(
    tmp_path: Path, aws: AwsWorld, put: Put, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(ssm_parameter=("/broker/secret", SSM_VALUE))
    monkeypatch.setenv("BROKER_REGION", aws.region)
    path = write_config(
        tmp_path,
        aws,
        aws__region="${env:BROKER_REGION}",
        service__secret_key="${ssm:/broker/secret}",
    )

    assert secret_key(load_config(path)) == SSM_VALUE
    assert [r.region for r in aws.recorder.requests()] == [aws.region]


def test_check_reports_a_missing_parameter_with_every_other_problem(
    tmp_path: Path, aws: AwsWorld
) -> None:
    path = write_config(
        tmp_path, aws, service__secret_key="${ssm:/broker/absent}", aws__sts__duration_seconds=600
    )
    result = subprocess.run(
        [CLI, "check", "--config", str(path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[1:] == [
        f"  aws.sts.duration_seconds (line {line_of(path, 'duration_seconds')}): "
        "must be at least 900",
        f"  service.secret_key (line {line_of(path, 'secret_key')}): "
        f"SSM parameter /broker/absent not found (region {aws.region})",
    ]
    assert "Traceback" not in result.stderr
    assert aws.recorder.calls("GetParameter") == [
        {"Name": "/broker/absent", "WithDecryption": True}
    ]


def test_check_offline_reads_nothing_from_aws(tmp_path: Path, aws: AwsWorld) -> None:
    path = write_config(
        tmp_path,
        aws,
        service__secret_key="${ssm:/broker/absent}",
        providers=oidc_with_secret("${secretsmanager:broker/absent#client_secret}"),
        aws__sts__duration_seconds=600,
    )
    result = subprocess.run(
        [CLI, "check", "--offline", "--config", str(path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.splitlines()[1:] == [
        f"  aws.sts.duration_seconds (line {line_of(path, 'duration_seconds')}): "
        "must be at least 900"
    ]
    assert aws.recorder.requests() == []


def test_check_offline_passes_and_names_the_keys_it_left_unread(
    tmp_path: Path, aws: AwsWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path,
        aws,
        service__secret_key="${ssm:/broker/absent}",
        providers=oidc_with_secret("${secretsmanager:broker/absent#client_secret}"),
    )

    assert main(["check", "--offline", "--config", str(path)]) == 0

    assert (
        capsys.readouterr()
        .out.rstrip()
        .endswith(
            "offline: not resolved, and not checked beyond their syntax: "
            "providers[0].client_secret, service.secret_key"
        )
    )
    assert aws.recorder.requests() == []


@pytest.mark.parametrize(
    ("secret", "reference", "expected"),
    [
        pytest.param(
            None,
            "broker/absent#client_secret",
            "secret broker/absent not found (region us-east-1)",
            id="missing-secret",
        ),
        pytest.param(
            SECRET_JSON,
            "broker/idp#clientsecret",
            "key 'clientsecret' not found in secret broker/idp",
            id="missing-key",
        ),
        pytest.param(
            f"not json {CLIENT_SECRET}",
            "broker/idp#client_secret",
            "secret broker/idp is not a JSON object, so it has no key 'client_secret'",
            id="not-json",
        ),
        pytest.param(
            SECRET_JSON,
            "broker/idp#n",
            "key 'n' of secret broker/idp is not a string (it is a number)",
            id="not-a-string",
        ),
    ],
)
def test_secrets_manager_failures_are_problems_of_their_key(
    secret: str | None, reference: str, expected: str, tmp_path: Path, aws: AwsWorld, put: Put
) -> None:
    if secret is not None:
        put(secret=("broker/idp", secret))
    path = write_config(
        tmp_path, aws, providers=oidc_with_secret(f"${{secretsmanager:{reference}}}")
    )

    problems = problems_of(path)

    assert problems == [
        f"providers[0].client_secret (line {line_of(path, 'client_secret')}): {expected}"
    ]
    assert not any(CLIENT_SECRET in problem for problem in problems)
    assert len(aws.recorder.calls("GetSecretValue")) == 1


@pytest.mark.parametrize(
    ("reference", "rule"),
    [
        ("${ssm:}", "${ssm:/PATH/NAME}"),
        ("${ssm:has space}", "${ssm:/PATH/NAME}"),
        ("${ssm:a//b}", "${ssm:/PATH/NAME}"),
        ("${secretsmanager:broker/idp#}", "${secretsmanager:NAME-OR-ARN[#KEY]}"),
        ("${secretsmanager:no spaces}", "${secretsmanager:NAME-OR-ARN[#KEY]}"),
    ],
)
def test_a_malformed_reference_is_a_problem_and_reads_nothing(
    reference: str, rule: str, tmp_path: Path, aws: AwsWorld
) -> None:
    path = write_config(tmp_path, aws, service__secret_key=reference)

    [problem] = problems_of(path)

    assert problem.startswith(
        f"service.secret_key (line {line_of(path, 'secret_key')}): "
        f"{reference!r} is not a reference: write {rule}"
    )
    assert aws.recorder.requests() == []


def test_a_resolved_value_is_never_echoed(tmp_path: Path, aws: AwsWorld, put: Put) -> None:
    put(ssm_parameter=("/broker/short", "short-ssm-value"))
    path = write_config(tmp_path, aws, service__secret_key="${ssm:/broker/short}")

    problems = problems_of(path)

    assert problems == [
        f"service.secret_key (line {line_of(path, 'secret_key')}): must be at least 32 characters"
    ]
    assert not any("short-ssm-value" in problem for problem in problems)


def test_no_credentials_is_a_problem_with_a_short_reason(
    tmp_path: Path, aws: AwsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    path = write_config(tmp_path, aws, service__secret_key="${ssm:/broker/secret}")

    assert problems_of(path) == [
        f"service.secret_key (line {line_of(path, 'secret_key')}): could not read SSM "
        "parameter /broker/secret: NoCredentialsError: Unable to locate credentials"
    ]
    assert aws.recorder.requests() == []


def test_an_unreachable_endpoint_is_a_problem_with_a_short_reason(
    tmp_path: Path, aws: AwsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", closed)
    path = write_config(
        tmp_path, aws, providers=oidc_with_secret("${secretsmanager:broker/idp#client_secret}")
    )

    [problem] = problems_of(path)

    assert problem.startswith(
        f"providers[0].client_secret (line {line_of(path, 'client_secret')}): could not read "
        f"secret broker/idp: EndpointConnectionError: Could not connect to the endpoint URL"
    )
    assert closed in problem


def test_a_secret_arn_is_read_in_its_own_region(tmp_path: Path, aws: AwsWorld) -> None:
    elsewhere = boto3.client(
        "secretsmanager",
        endpoint_url=aws.endpoint_url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arn = elsewhere.create_secret(Name="broker/idp", SecretString=SECRET_JSON)["ARN"]
    try:
        aws.recorder.reset()
        path = write_config(
            tmp_path, aws, providers=oidc_with_secret(f"${{secretsmanager:{arn}#client_secret}}")
        )

        client_secret = oidc(load_config(path)).client_secret

        assert client_secret is not None and client_secret.get_secret_value() == CLIENT_SECRET
        assert [(r.operation, r.region) for r in aws.recorder.requests()] == [
            ("GetSecretValue", "eu-west-1")
        ]
        assert aws.recorder.calls("GetSecretValue") == [{"SecretId": arn}]
    finally:
        elsewhere.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
