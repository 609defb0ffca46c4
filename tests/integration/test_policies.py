"""``chime-broker policies``: every document it prints parses, scopes credentials to one app
instance user through ``${aws:PrincipalTag/<user_tag>}``, trusts exactly the right principals,
passes parliament (permission policies) and cfn-lint (the CloudFormation template)."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import cfnlint
import parliament
import pytest
import yaml

from service.cli.policies import add_policies_parser
from tests.fixtures.cfn_lint import cfn_lint_findings, strings_in
from tests.fixtures.configs import valid_config_dict

ACCOUNT = "111122223333"
APP_INSTANCE_ARN = f"arn:aws:chime:us-east-1:{ACCOUNT}:app-instance/abcd-1234"
POOL_ID = "us-east-1:11111111-2222-3333-4444-555555555555"
POOL_ARN = f"arn:aws:cognito-identity:us-east-1:{ACCOUNT}:identitypool/{POOL_ID}"
USER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ChimeMessagingSampleAppUserRole"
CHAT_USER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/chat/users/ChimeChatUserRole"
PARTNER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/partners/ChimePartnerUserRole"
SERVER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/broker/ChimeBrokerServer"
USER_TAG = "chat_user"

STS_TRUST_ACTIONS = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
COGNITO_TRUST_ACTIONS = ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]
# The guide's own list, minus ChannelFlowCallback (the flow processor's, bearer-less action).
USER_ACTIONS = {
    "chime:SendChannelMessage", "chime:ListChannelMessages", "chime:GetChannelMessage",
    "chime:GetChannelMessageStatus", "chime:UpdateChannelMessage", "chime:RedactChannelMessage",
    "chime:DeleteChannelMessage", "chime:CreateChannelMembership",
    "chime:DeleteChannelMembership", "chime:ListChannelMemberships",
    "chime:DescribeChannelMembership", "chime:DescribeChannelMembershipForAppInstanceUser",
    "chime:ListChannelMembershipsForAppInstanceUser", "chime:CreateChannelModerator",
    "chime:DeleteChannelModerator", "chime:ListChannelModerators",
    "chime:DescribeChannelModerator", "chime:DescribeChannelModeratedByAppInstanceUser",
    "chime:ListChannelsModeratedByAppInstanceUser", "chime:CreateChannelBan",
    "chime:DeleteChannelBan", "chime:ListChannelBans", "chime:DescribeChannelBan",
    "chime:CreateChannel", "chime:DeleteChannel", "chime:UpdateChannel", "chime:DescribeChannel",
    "chime:ListChannels", "chime:ListSubChannels", "chime:UpdateChannelReadMarker",
    "chime:Connect", "chime:ListChannelFlows", "chime:DescribeChannelFlow",
    "chime:AssociateChannelFlow", "chime:DisassociateChannelFlow",
}  # fmt: skip
SEVERITIES = ["MUTE", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


@dataclass(frozen=True)
class Scenario:
    """A config shape: which exchanges its providers use and which Chime features it turns on."""

    name: str
    exchanges: tuple[str, ...]
    provision_users: bool = False
    messaging_endpoint: bool = False
    partner_role: bool = False
    user_role: str = USER_ROLE
    sts_duration: int = 3600

    @property
    def uses_sts(self) -> bool:
        return "sts" in self.exchanges

    @property
    def uses_cognito(self) -> bool:
        return bool({"cognito", "cognito_developer"} & set(self.exchanges))

    @property
    def needs_server_role(self) -> bool:
        return (
            self.uses_sts
            or "cognito_developer" in self.exchanges
            or self.provision_users
            or self.messaging_endpoint
        )


SCENARIOS = [
    Scenario("sts-only", ("sts",)),
    Scenario("cognito-only", ("cognito",)),
    Scenario("cognito-developer", ("cognito_developer",)),
    Scenario(
        "all-modes",
        ("sts", "cognito", "cognito_developer"),
        provision_users=True,
        messaging_endpoint=True,
    ),
    Scenario(
        "per-provider-role",
        ("sts",),
        partner_role=True,
        user_role=CHAT_USER_ROLE,
        sts_duration=7200,
    ),
]


def config_yaml(scenario: Scenario) -> str:
    providers: list[dict[str, Any]] = []
    for exchange in scenario.exchanges:
        # Namespaces must differ; exchange: cognito needs a bare claim as user id.
        prefix = {"sts": "corp-", "cognito": "", "cognito_developer": "dev-"}[exchange]
        name = exchange.replace("_", "-")
        providers.append(
            {
                "name": name,
                "kind": "oidc",
                "issuer": f"https://{name}.idp.example.com",
                "client_id": f"{name}-client",
                "exchange": exchange,
                "map": {"user_id": prefix + "{sub}"},
            }
        )
    if scenario.partner_role:
        providers.append(
            {
                "name": "partners",
                "kind": "oidc",
                "issuer": "https://partners.idp.example.com",
                "client_id": "partners-client",
                "exchange": "sts",
                "role_arn": PARTNER_ROLE,
                "map": {"user_id": "partner-{sub}"},
            }
        )
    document = valid_config_dict(
        aws__cognito__identity_pool_id=POOL_ID,
        aws__sts={"role_arn": scenario.user_role, "duration_seconds": scenario.sts_duration},
        chime__app_instance_arn=APP_INSTANCE_ARN,
        chime__user_tag=USER_TAG,
        chime__provision_users=scenario.provision_users,
        chime__messaging_endpoint=scenario.messaging_endpoint,
        providers=providers,
    )
    # A section the config does not use is left out, as an admin would leave it out.
    if not scenario.uses_cognito:
        del document["aws"]["cognito"]
    if not scenario.uses_sts:
        del document["aws"]["sts"]
    return yaml.safe_dump(document, sort_keys=False)


def chime_broker_policies(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run ``chime-broker policies ARGV`` in process; its exit code, stdout and stderr."""
    parser = argparse.ArgumentParser(prog="chime-broker")
    add_policies_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policies", *argv])
    code: int = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(params=SCENARIOS, ids=lambda s: s.name)
def scenario(request: pytest.FixtureRequest) -> Scenario:
    scenario: Scenario = request.param
    return scenario


@pytest.fixture
def config_file(scenario: Scenario, tmp_path: Path) -> Path:
    path = tmp_path / f"{scenario.name}.yaml"
    path.write_text(config_yaml(scenario))
    return path


@pytest.fixture
def documents(config_file: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = chime_broker_policies(
        ["--config", str(config_file), "--server-role-arn", SERVER_ROLE], capsys
    )
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


@pytest.fixture
def template(config_file: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = chime_broker_policies(
        ["--config", str(config_file), "--format", "cloudformation"], capsys
    )
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert document["Version"] == "2012-10-17"
    found: list[dict[str, Any]] = document["Statement"]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statement_with(document: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in statements(document) if action in as_list(s["Action"])]


def parliament_findings(document: dict[str, Any], *, community: bool) -> list[tuple[str, str, Any]]:
    """parliament's findings above LOW, as (issue, severity, detail)."""
    policy = parliament.analyze_policy_string(
        json.dumps(document), include_community_auditors=community
    )
    findings = [parliament.enhance_finding(f) for f in policy.findings]
    return [
        (f.issue, f.severity, f.detail)
        for f in findings
        if SEVERITIES.index(f.severity) > SEVERITIES.index("LOW")
    ]


def known_iam_actions() -> dict[str, set[str]]:
    """IAM's action names by service prefix, from cfn-lint's copy of the IAM reference."""
    path = Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json"
    spec = json.loads(path.read_text())
    return {prefix: set(service["Actions"]) for prefix, service in spec.items()}


def test_every_document_is_json_and_the_set_matches_the_config(
    scenario: Scenario, documents: dict[str, Any]
) -> None:
    expected = {"user-role-permission-policy", "user-role-trust-policy"}
    if scenario.needs_server_role:
        expected |= {"server-role-policy", "server-role-trust-policy"}
    assert set(documents) == expected
    for document in documents.values():
        assert statements(document)
        for statement in statements(document):
            assert statement["Effect"] == "Allow"
            assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"])


def test_policy_variables_always_name_a_principal_tag(documents: dict[str, Any]) -> None:
    variables = [
        variable for text in strings_in(documents) for variable in re.findall(r"\$\{[^}]*\}", text)
    ]
    assert variables, "the permission policy must scope the user ARN with a policy variable"
    assert set(variables) == {"${aws:PrincipalTag/" + USER_TAG + "}"}


def test_permission_policy_acts_as_one_app_instance_user(documents: dict[str, Any]) -> None:
    policy = documents["user-role-permission-policy"]
    own_user = f"{APP_INSTANCE_ARN}/user/${{aws:PrincipalTag/{USER_TAG}}}"
    channels = f"{APP_INSTANCE_ARN}/channel/*"

    endpoint = statement_with(policy, "chime:GetMessagingSessionEndpoint")
    assert len(endpoint) == 1
    assert endpoint[0]["Action"] == ["chime:GetMessagingSessionEndpoint"]
    assert endpoint[0]["Resource"] == "*"

    others = [s for s in statements(policy) if s is not endpoint[0]]
    assert {a for s in others for a in s["Action"]} == USER_ACTIONS
    for statement in others:
        resources = as_list(statement["Resource"])
        assert resources[:2] == [own_user, channels]
        # Channel flows are app-instance resources of their own; nothing else widens scope.
        assert resources[2:] in ([], [f"{APP_INSTANCE_ARN}/channel-flow/*"])
        assert "Condition" not in statement
    send = statement_with(policy, "chime:SendChannelMessage")[0]
    assert as_list(send["Resource"]) == [own_user, channels]


def test_trust_policy_admits_the_server_role_and_the_pool_as_configured(
    scenario: Scenario, documents: dict[str, Any]
) -> None:
    trust = statements(documents["user-role-trust-policy"])
    by_principal = {next(iter(s["Principal"])): s for s in trust}
    assert len(by_principal) == len(trust)

    if scenario.uses_sts:
        server = by_principal.pop("AWS")
        assert server["Principal"] == {"AWS": SERVER_ROLE}
        assert server["Action"] == STS_TRUST_ACTIONS
        assert server["Condition"] == {"Null": {f"aws:RequestTag/{USER_TAG}": "false"}}
    if scenario.uses_cognito:
        pool = by_principal.pop("Federated")
        assert pool["Principal"] == {"Federated": "cognito-identity.amazonaws.com"}
        assert pool["Action"] == COGNITO_TRUST_ACTIONS
        assert pool["Condition"] == {
            "StringEquals": {"cognito-identity.amazonaws.com:aud": POOL_ID},
            "ForAnyValue:StringLike": {"cognito-identity.amazonaws.com:amr": "authenticated"},
        }
    assert by_principal == {}, "no statement for a mode the config does not use"


def test_server_role_may_do_exactly_what_the_config_uses(
    scenario: Scenario, documents: dict[str, Any]
) -> None:
    if not scenario.needs_server_role:
        assert "server-role-policy" not in documents
        return
    policy = documents["server-role-policy"]
    grants = {action: as_list(s["Resource"]) for s in statements(policy) for action in s["Action"]}
    expected: dict[str, list[str]] = {}
    if scenario.uses_sts:
        roles = (
            [scenario.user_role, PARTNER_ROLE] if scenario.partner_role else [scenario.user_role]
        )
        expected.update({action: roles for action in STS_TRUST_ACTIONS})
    if "cognito_developer" in scenario.exchanges:
        expected["cognito-identity:GetOpenIdTokenForDeveloperIdentity"] = [POOL_ARN]
    if scenario.provision_users:
        # IAM has no resource-level permission for CreateAppInstanceUser.
        expected["chime:CreateAppInstanceUser"] = ["*"]
        expected["chime:DescribeAppInstanceUser"] = [f"{APP_INSTANCE_ARN}/user/*"]
        expected["chime:UpdateAppInstanceUser"] = [f"{APP_INSTANCE_ARN}/user/*"]
    if scenario.messaging_endpoint:
        expected["chime:GetMessagingSessionEndpoint"] = ["*"]
    assert grants == expected

    runtime = statements(documents["server-role-trust-policy"])
    assert runtime == [
        {
            "Sid": "BrokerRuntime",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "sts:AssumeRole",
        }
    ]


def test_every_action_is_one_iam_knows(documents: dict[str, Any]) -> None:
    known = known_iam_actions()
    for document in documents.values():
        for statement in statements(document):
            for action in as_list(statement["Action"]):
                prefix, name = action.split(":")
                assert name.lower() in known[prefix], action


def test_user_actions_are_messaging_operations_or_the_websocket() -> None:
    model = botocore.session.get_session().get_service_model("chime-sdk-messaging")
    operations = set(model.operation_names)
    # chime:Connect authorizes the messaging WebSocket; it is not an API operation.
    assert {a.split(":")[1] for a in USER_ACTIONS} - operations == {"Connect"}


def test_parliament_finds_nothing_above_low_in_the_permission_policies(
    documents: dict[str, Any],
) -> None:
    # The community auditors too: the user role must not expose credentials or escalate.
    assert parliament_findings(documents["user-role-permission-policy"], community=True) == []
    if "server-role-policy" not in documents:
        return
    # Default auditors only: the community ones flag every credential-issuing action, and
    # issuing credentials is the server role's job.
    findings = parliament_findings(documents["server-role-policy"], community=False)
    # parliament refuses any ':' after "identitypool/", but identity pool ids are
    # REGION:UUID and IAM's own ARN format (cfn-lint's copy: identitypool/.*) allows it.
    pool_mismatch = [
        {
            "action": "cognito-identity:GetOpenIdTokenForDeveloperIdentity",
            "required_format": "arn:*:cognito-identity:*:*:identitypool/*",
        }
    ]
    remaining = [f for f in findings if not (f[0] == "RESOURCE_MISMATCH" and f[2] == pool_mismatch)]
    assert remaining == []


@pytest.mark.slow
def test_cfn_lint_passes_the_template_and_finds_an_unknown_action_in_it(
    template: dict[str, Any], tmp_path: Path
) -> None:
    broken = json.loads(
        json.dumps(template).replace("chime:ListSubChannels", "chime:ListSubChanels")
    )
    findings = cfn_lint_findings(
        {tmp_path / "chime-broker-roles.json": template, tmp_path / "broken.json": broken}
    )
    assert findings[tmp_path / "chime-broker-roles.json"] == []
    [unknown_action] = findings[tmp_path / "broken.json"]
    assert "listsubchanels" in unknown_action


def test_cloudformation_template_holds_the_same_documents(
    scenario: Scenario, template: dict[str, Any], documents: dict[str, Any]
) -> None:
    resources = template["Resources"]
    user_role = resources["UserRole"]["Properties"]
    assert user_role["Policies"][0]["PolicyDocument"] == documents["user-role-permission-policy"]
    # Kept literal: the template has no Fn::Sub that would try to resolve ${aws:...}.
    assert "Fn::Sub" not in set(strings_in(template))
    if scenario.uses_sts:
        # The stack creates the role that aws.sts.role_arn names, long enough for its sessions.
        path, _, name = scenario.user_role.split(":role", 1)[1].rpartition("/")
        assert (user_role["Path"], user_role["RoleName"]) == (path + "/", name)
        assert user_role.get("MaxSessionDuration", 3600) == scenario.sts_duration
    else:
        assert "RoleName" not in user_role
    trust = user_role["AssumeRolePolicyDocument"]
    expected_trust = json.loads(
        json.dumps(documents["user-role-trust-policy"]).replace(
            json.dumps(SERVER_ROLE), json.dumps({"Fn::GetAtt": ["ServerRole", "Arn"]})
        )
    )
    assert trust == expected_trust
    outputs = template["Outputs"]
    assert outputs["UserRoleArn"]["Value"] == {"Fn::GetAtt": ["UserRole", "Arn"]}
    if scenario.needs_server_role:
        assert outputs["ServerRoleArn"]["Value"] == {"Fn::GetAtt": ["ServerRole", "Arn"]}
        server_policy = resources["ServerRolePolicy"]["Properties"]
        assert server_policy["RoleName"] == {"Ref": "ServerRole"}
        expected_server = json.loads(
            json.dumps(documents["server-role-policy"]).replace(
                json.dumps(scenario.user_role), json.dumps({"Fn::GetAtt": ["UserRole", "Arn"]})
            )
        )
        assert server_policy["PolicyDocument"] == expected_server
    else:
        assert set(resources) == {"UserRole"}
        assert "ServerRoleArn" not in outputs


def test_broker_principal_may_be_a_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sts.yaml"
    path.write_text(config_yaml(Scenario("sts-only", ("sts",))))
    code, out, err = chime_broker_policies(
        ["--config", str(path), "--broker-principal", "ecs-tasks.amazonaws.com"], capsys
    )
    assert code == 0, err
    documents = json.loads(out)
    runtime = statements(documents["server-role-trust-policy"])[0]
    assert runtime["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    # Without --server-role-arn the user role trusts the role named chime-broker-server.
    server = statements(documents["user-role-trust-policy"])[0]
    assert server["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:role/chime-broker-server"}


def test_an_invalid_config_prints_its_problems_and_no_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config_yaml(Scenario("sts-only", ("sts",))).replace("user_tag", "user_tga"))
    with pytest.raises(SystemExit) as exit_info:
        chime_broker_policies(["--config", str(path)], capsys)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "user_tga" in captured.err
