"""``chime-broker template --target lambda``: a CloudFormation template that passes cfn-lint,
runs ``wsgi.lambda_handler`` as the server role behind an HTTP API, holds the roles exactly as
``chime-broker policies`` builds them, creates the DynamoDB table the store works with, and
grants the function what its store and its ``${ssm:…}``/``${secretsmanager:…}`` references
need, no more; the README's commands use it as it is."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from identity import lambda_template
from identity.config.document import load_config
from identity.dynamodb_store import DynamoDbStore
from service.cli import main
from tests.fixtures.apps import broker_config_dict
from tests.fixtures.cfn_lint import cfn_lint_findings, strings_in
from tests.fixtures.configs import ACCOUNT, APP_INSTANCE_ARN, REGION, REMOVE, provider_dict
from tests.fixtures.moto_server import AwsWorld

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE = "chime-broker-state"
PARAMETER = "/chime-broker/secret-key"
SECRET = "chime-broker/okta"
SECRET_BY_ARN = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:partners-AbCdEf"
SERVER_ROLE = {"Fn::GetAtt": ["ServerRole", "Arn"]}
BASIC_EXECUTION = {
    "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}
VPC_ACCESS = {
    "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}


def cognito_dynamodb_config() -> dict[str, Any]:
    """(a) exchange: cognito only, a DynamoDB store, slow AWS timeouts."""
    return broker_config_dict(
        store=f"dynamodb://{TABLE}",
        aws__timeouts={"connect": 4, "read": 20},
        providers=[provider_dict("oidc", exchange="cognito", map={"user_id": "{sub}"})],
    )


def sts_references_config() -> dict[str, Any]:
    """(b) exchange: sts, provisioning, a DynamoDB store, secrets kept in SSM and Secrets
    Manager."""
    return broker_config_dict(
        store="dynamodb://sts-state",
        chime__provision_users=True,
        service__secret_key="${ssm:" + PARAMETER + "}",
        providers=[
            provider_dict("oidc", exchange="sts", client_id="${secretsmanager:" + SECRET + "#id}"),
            provider_dict(
                "facebook", exchange="sts", app_secret="${secretsmanager:" + SECRET + "}"
            ),
        ],
    )


def redis_config() -> dict[str, Any]:
    """(c) the default cognito_developer provider and a Redis store."""
    return broker_config_dict(store="rediss://redis.internal.example:6380/0")


# A reference in a comment is no reference: the function must not be granted it.
COMMENT = "# an older config read ${ssm:/chime-broker/old-key} here\n"
CONFIGS = {
    "cognito-dynamodb": cognito_dynamodb_config,
    "sts-references": sts_references_config,
    "redis": redis_config,
}


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(COMMENT + yaml.safe_dump(document, sort_keys=False))
    return path


def chime_broker(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``chime-broker ARGV`` in process; its exit code, stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def generate(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = chime_broker(
        ["template", "--config", str(config), "--target", "lambda"], capsys
    )
    assert code == 0, err
    template: dict[str, Any] = json.loads(out)
    return template


@pytest.fixture(params=sorted(CONFIGS))
def config_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def any_config(config_name: str, tmp_path: Path) -> Path:
    return write_config(tmp_path / f"{config_name}.yaml", CONFIGS[config_name]())


@pytest.fixture
def cognito_dynamodb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return generate(write_config(tmp_path / "a.yaml", cognito_dynamodb_config()), capsys)


@pytest.fixture
def sts_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return generate(write_config(tmp_path / "b.yaml", sts_references_config()), capsys)


@pytest.fixture
def redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return generate(write_config(tmp_path / "c.yaml", redis_config()), capsys)


def function_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    policy = template["Resources"]["FunctionRolePolicy"]["Properties"]
    assert policy["RoleName"] == {"Ref": "ServerRole"}
    statements: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return statements


def by_sid(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in function_statements(template) if "Sid" in s}


def arn_pattern(resource: Any, account: str, region: str = REGION) -> str:
    """An IAM resource (a string or an Fn::Sub) as the glob IAM matches ARNs with."""
    text = resource["Fn::Sub"] if isinstance(resource, dict) else resource
    assert isinstance(text, str)
    for name, value in (("Partition", "aws"), ("AccountId", account), ("Region", region)):
        text = text.replace("${AWS::" + name + "}", value)
    return text


@pytest.mark.slow
def test_cfn_lint_finds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    templates = {
        tmp_path / f"{name}.json": generate(
            write_config(tmp_path / f"{name}.yaml", make_config()), capsys
        )
        for name, make_config in CONFIGS.items()
    }
    findings = cfn_lint_findings(templates)
    assert findings == {path: [] for path in templates}


def test_the_function_runs_the_handler_as_the_server_role(
    cognito_dynamodb: dict[str, Any],
) -> None:
    resources = cognito_dynamodb["Resources"]
    function = resources["BrokerFunction"]
    properties = function["Properties"]
    assert properties["Handler"] == "wsgi.lambda_handler"
    assert properties["Runtime"] in ("python3.11", "python3.12")
    assert properties["Role"] == SERVER_ROLE
    assert properties["Environment"] == {"Variables": {"BROKER_CONFIG": {"Ref": "ConfigPath"}}}
    assert properties["Code"] == {
        "S3Bucket": {"Ref": "CodeS3Bucket"},
        "S3Key": {"Ref": "CodeS3Key"},
    }
    assert cognito_dynamodb["Parameters"]["ConfigPath"]["Default"] == "config/broker.yaml"
    # Three attempts of a call at 4 s connect + 20 s read must fit.
    assert properties["Timeout"] > 3 * (4 + 20)
    assert properties["Timeout"] <= 900
    assert properties["MemorySize"] >= 256
    assert "VpcConfig" not in properties
    # Its permissions exist before it starts: start-up reads the table.
    assert function["DependsOn"] == ["FunctionRolePolicy"]

    server_role = resources["ServerRole"]["Properties"]
    assert server_role["AssumeRolePolicyDocument"]["Statement"] == [
        {
            "Sid": "BrokerRuntime",
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    assert server_role["ManagedPolicyArns"] == [BASIC_EXECUTION]
    assert cognito_dynamodb["Outputs"]["ServerRoleArn"]["Value"] == SERVER_ROLE


def test_an_http_api_sends_every_request_to_the_function(
    cognito_dynamodb: dict[str, Any],
) -> None:
    resources = cognito_dynamodb["Resources"]
    assert resources["HttpApi"]["Properties"]["ProtocolType"] == "HTTP"
    integration = resources["HttpApiIntegration"]["Properties"]
    assert integration == {
        "ApiId": {"Ref": "HttpApi"},
        "IntegrationType": "AWS_PROXY",
        "IntegrationUri": {"Fn::GetAtt": ["BrokerFunction", "Arn"]},
        "PayloadFormatVersion": "2.0",
    }
    route = resources["HttpApiRoute"]["Properties"]
    assert route["RouteKey"] == "$default"
    assert route["Target"] == {"Fn::Join": ["/", ["integrations", {"Ref": "HttpApiIntegration"}]]}
    stage = resources["HttpApiStage"]["Properties"]
    assert (stage["StageName"], stage["AutoDeploy"]) == ("$default", True)
    permission = resources["HttpApiInvokePermission"]["Properties"]
    assert permission["FunctionName"] == {"Ref": "BrokerFunction"}
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["SourceArn"]["Fn::Sub"].endswith(":${HttpApi}/*")

    url = cognito_dynamodb["Outputs"]["ApiUrl"]
    assert url["Value"] == {"Fn::GetAtt": ["HttpApi", "ApiEndpoint"]}
    assert "service.public_url" in url["Description"]
    assert "service.public_url (https://auth.example.chat)" in cognito_dynamodb["Description"]


def test_a_dynamodb_store_gets_its_table_and_only_its_table(
    cognito_dynamodb: dict[str, Any],
) -> None:
    table = cognito_dynamodb["Resources"]["StoreTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["Properties"] == {
        "TableName": TABLE,
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
    }
    assert function_statements(cognito_dynamodb) == [
        {
            "Sid": "StoreTable",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:BatchGetItem",
            ],
            "Resource": [{"Fn::GetAtt": ["StoreTable", "Arn"]}],
        }
    ]
    assert cognito_dynamodb["Outputs"]["StoreTableName"]["Value"] == {"Ref": "StoreTable"}
    assert f"aws.region ({REGION})" in cognito_dynamodb["Description"]
    assert not {"SecretsKmsKeyArn", "SubnetIds"} & set(cognito_dynamodb["Parameters"])


def test_the_declared_table_serves_the_store_with_the_granted_actions(
    cognito_dynamodb: dict[str, Any], aws: AwsWorld
) -> None:
    # The table exactly as declared (under a name of this test's own), in moto.
    properties = dict(cognito_dynamodb["Resources"]["StoreTable"]["Properties"])
    ttl = properties.pop("TimeToLiveSpecification")
    name = f"template-table-{uuid.uuid4().hex[:12]}"
    dynamodb = aws.client("dynamodb")
    dynamodb.create_table(**{**properties, "TableName": name})
    dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    try:
        aws.recorder.reset()
        store = DynamoDbStore(name, region=aws.region)
        store.ping()
        store.set("a", b"1", 60)
        assert store.set_if_absent("b", b"2", 60)
        assert store.get_many(["a", "b", "c"]) == [b"1", b"2", None]
        assert store.incr("n", 60) == 1
        assert store.get_and_delete("a") == b"1"
        store.delete("b")
        assert store.get("b") is None
        store.close()
        sent = {f"dynamodb:{op}" for op in aws.recorder.operations()}
    finally:
        dynamodb.delete_table(TableName=name)
    granted = set(by_sid(cognito_dynamodb)["StoreTable"]["Action"])
    assert sent <= granted, f"the store calls {sorted(sent - granted)}, which are not granted"


def test_roles_are_those_of_the_policies_command(
    any_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = generate(any_config, capsys)
    code, out, err = chime_broker(
        ["policies", "--config", str(any_config), "--offline", "--format", "cloudformation"],
        capsys,
    )
    assert code == 0, err
    roles = json.loads(out)["Resources"]
    resources = template["Resources"]
    assert resources["UserRole"] == roles["UserRole"]
    if "ServerRolePolicy" in roles:
        assert resources["ServerRolePolicy"] == roles["ServerRolePolicy"]
        assert "ServerRolePolicy" in resources["BrokerFunction"]["DependsOn"]
    else:
        assert "ServerRolePolicy" not in resources
    # Only the trust differs: Lambda runs the broker; and Lambda's own managed policies.
    expected_server_role = roles.get("ServerRole", resources["ServerRole"])["Properties"]
    server_role = resources["ServerRole"]["Properties"]
    assert server_role["Description"] == expected_server_role["Description"]
    assert set(server_role) == {"Description", "AssumeRolePolicyDocument", "ManagedPolicyArns"}
    # ${aws:PrincipalTag/...} stays literal: no Fn::Sub around any policy of the roles.
    for name in ("UserRole", "ServerRolePolicy"):
        assert "Fn::Sub" not in set(strings_in(resources.get(name, {})))


def test_sts_roles_and_references_are_granted(sts_references: dict[str, Any]) -> None:
    resources = sts_references["Resources"]
    # The user role trusts the function's role for STS.
    trust = resources["UserRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"AWS": SERVER_ROLE}]
    server_policy = resources["ServerRolePolicy"]["Properties"]["PolicyDocument"]
    assert {"Fn::GetAtt": ["UserRole", "Arn"]} in server_policy["Statement"][0]["Resource"]

    statements = by_sid(sts_references)
    assert set(statements) == {"StoreTable", "ConfigParameters", "ConfigSecrets"}
    assert statements["ConfigParameters"]["Action"] == ["ssm:GetParameter"]
    assert [arn_pattern(r, ACCOUNT) for r in statements["ConfigParameters"]["Resource"]] == [
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/chime-broker/secret-key"
    ]
    assert statements["ConfigSecrets"]["Action"] == ["secretsmanager:GetSecretValue"]
    # One secret, referenced twice (with and without #key), is granted once.
    assert [arn_pattern(r, ACCOUNT) for r in statements["ConfigSecrets"]["Resource"]] == [
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:chime-broker/okta-??????"
    ]
    assert "old-key" not in json.dumps(sts_references)

    decrypt = function_statements(sts_references)[-1]["Fn::If"]
    assert decrypt[0] == "HasSecretsKmsKey"
    assert decrypt[2] == {"Ref": "AWS::NoValue"}
    assert decrypt[1]["Action"] == ["kms:Decrypt"]
    assert decrypt[1]["Resource"] == [{"Ref": "SecretsKmsKeyArn"}]
    assert decrypt[1]["Condition"] == {
        "StringEquals": {
            "kms:ViaService": [
                f"ssm.{REGION}.amazonaws.com",
                f"secretsmanager.{REGION}.amazonaws.com",
            ]
        }
    }
    assert sts_references["Parameters"]["SecretsKmsKeyArn"]["Default"] == ""
    assert sts_references["Conditions"]["HasSecretsKmsKey"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "SecretsKmsKeyArn"}, ""]}]
    }
    assert resources["BrokerFunction"]["DependsOn"] == ["FunctionRolePolicy", "ServerRolePolicy"]


def test_the_granted_arns_are_those_the_config_load_reads(
    tmp_path: Path, aws: AwsWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    ssm, secrets = aws.client("ssm"), aws.client("secretsmanager")
    ssm.put_parameter(Name=PARAMETER, Value="k" * 40, Type="SecureString")
    secret = secrets.create_secret(Name=SECRET, SecretString=json.dumps({"id": "spa"}))
    try:
        parameter_arn = ssm.get_parameter(Name=PARAMETER)["Parameter"]["ARN"]
        config = write_config(tmp_path / "b.yaml", sts_references_config())
        aws.recorder.reset()
        loaded = load_config(str(config))
        requests = [r for r in aws.recorder.requests() if r.service in ("ssm", "secretsmanager")]
        template = generate(config, capsys)
    finally:
        ssm.delete_parameter(Name=PARAMETER)
        secrets.delete_secret(SecretId=secret["ARN"], ForceDeleteWithoutRecovery=True)
    secret_key = loaded.service.secret_key
    assert isinstance(secret_key, SecretStr) and secret_key.get_secret_value() == "k" * 40
    assert loaded.providers[0].client_id == "spa"  # type: ignore[attr-defined]
    statements = {
        action: [arn_pattern(r, aws.account_id, aws.region) for r in s["Resource"]]
        for s in function_statements(template)
        if s.get("Sid") in ("ConfigParameters", "ConfigSecrets")
        for action in s["Action"]
    }
    read = {(r.service, r.operation) for r in requests}
    assert read == {("ssm", "GetParameter"), ("secretsmanager", "GetSecretValue")}
    for pattern in statements["ssm:GetParameter"]:
        assert fnmatch.fnmatchcase(parameter_arn, pattern)
    for pattern in statements["secretsmanager:GetSecretValue"]:
        assert fnmatch.fnmatchcase(secret["ARN"], pattern), (secret["ARN"], pattern)


def test_references_by_arn_keep_their_arn_and_region() -> None:
    references = lambda_template.aws_references(
        "a: ${secretsmanager:" + SECRET_BY_ARN + "#key}\n"
        "b: ${ssm:plain-name}\n"
        "c: $${ssm:/literal}\n"
        "d: ${env:HOME}\n"
    )
    assert references == lambda_template.AwsReferences(("plain-name",), (SECRET_BY_ARN,))
    assert lambda_template.secret_arn(SECRET_BY_ARN, REGION) == SECRET_BY_ARN
    assert lambda_template.ssm_parameter_arn("plain-name", "eu-west-1") == {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:eu-west-1:${AWS::AccountId}:parameter/plain-name"
    }


def test_a_redis_store_runs_in_the_vpc_the_parameters_name(redis: dict[str, Any]) -> None:
    resources = redis["Resources"]
    assert "StoreTable" not in resources
    # No table and no references: nothing beyond the server role's own policy.
    assert "FunctionRolePolicy" not in resources
    assert resources["BrokerFunction"]["DependsOn"] == ["ServerRolePolicy"]
    parameters = redis["Parameters"]
    for name in ("SubnetIds", "SecurityGroupIds"):
        assert parameters[name]["Type"] == "CommaDelimitedList"
        assert parameters[name]["Default"] == ""
    assert redis["Conditions"]["InVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SubnetIds"}]}, ""]}]
    }
    assert resources["BrokerFunction"]["Properties"]["VpcConfig"] == {
        "Fn::If": [
            "InVpc",
            {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": {"Ref": "SecurityGroupIds"}},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert resources["ServerRole"]["Properties"]["ManagedPolicyArns"] == [
        BASIC_EXECUTION,
        {"Fn::If": ["InVpc", VPC_ACCESS, {"Ref": "AWS::NoValue"}]},
    ]
    assert "NAT gateway" in redis["Description"]
    assert "dynamodb" not in json.dumps(redis)


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("memory://", "memory:// keeps state inside one process"),
        ("sqlite:///broker-state.db", "sqlite:// keeps state on one machine's disk"),
        (None, "sqlite:// keeps state on one machine's disk"),
    ],
    ids=["memory", "sqlite", "default-store"],
)
def test_stores_lambda_instances_cannot_share_are_refused(
    store: str | None, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = broker_config_dict(store=REMOVE if store is None else store)
    config = write_config(tmp_path / "local.yaml", document)
    code, out, err = chime_broker(
        ["template", "--config", str(config), "--target", "lambda"], capsys
    )
    assert code == 1
    assert out == ""
    assert err == (
        f"{config}: store: {reason}, and Lambda runs many instances that cannot share it: "
        "use dynamodb://TABLE (or redis:// in a VPC)\n"
    )


def test_the_target_is_required_and_lambda_is_the_one_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "a.yaml", cognito_dynamodb_config())
    for argv in (["--target", "ecs"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["template", "--config", str(config), *argv])
        assert exit_info.value.code == 2
        assert "--target" in capsys.readouterr().err


def readme_commands() -> list[list[str]]:
    """The commands of the README's Lambda section, continuation lines joined, split as the
    shell splits them."""
    text = README.read_text()
    section = text.split("### AWS Lambda with CloudFormation\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    return [shlex.split(line) for line in blocks[0].replace("\\\n", " ").splitlines()]


def test_the_readme_commands_deploy_the_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = readme_commands()
    template_command = commands[0]
    assert template_command[:2] == ["chime-broker", "template"]
    # Run as written, with the README's broker.yaml and template.json in a directory of
    # the test's own.
    assert template_command[-2:] == [">", "template.json"]
    config_at = template_command.index("--config") + 1
    assert template_command[config_at] == "broker.yaml"
    sts = sts_references_config()
    config = write_config(tmp_path / "broker.yaml", sts)
    argv = [*template_command[1:config_at], str(config), *template_command[config_at + 1 : -2]]
    code, out, err = chime_broker(argv, capsys)
    assert code == 0, err
    template = json.loads(out)

    deploy = next(c for c in commands if c[:3] == ["aws", "cloudformation", "deploy"])
    assert deploy[deploy.index("--template-file") + 1] == "template.json"
    overrides = deploy[deploy.index("--parameter-overrides") + 1 :]
    passed = {item.split("=", 1)[0] for item in overrides}
    parameters = template["Parameters"]
    assert passed <= set(parameters)
    assert {name for name, p in parameters.items() if "Default" not in p} <= passed
    # The user role is named after aws.sts.role_arn: CloudFormation wants CAPABILITY_NAMED_IAM.
    assert "RoleName" in template["Resources"]["UserRole"]["Properties"]
    assert deploy[deploy.index("--capabilities") + 1] == "CAPABILITY_NAMED_IAM"
    # The zip holds the config where ConfigPath's default says.
    copy = next(c for c in commands if c[:1] == ["cp"] and "broker.yaml" in c)
    destination = copy[copy.index("broker.yaml") + 1]
    assert (
        destination.removeprefix("build/lambda/") + "broker.yaml"
        == (parameters["ConfigPath"]["Default"])
    )
    # The output the README reads exists.
    query = next(c for c in commands if "describe-stacks" in c)
    assert "OutputKey=='ApiUrl'" in query[query.index("--query") + 1]
    assert "ApiUrl" in template["Outputs"]
    assert APP_INSTANCE_ARN in json.dumps(template)
