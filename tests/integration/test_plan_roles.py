"""``chime-broker plan --roles``: the user roles' trust and permission policies in IAM (moto)
compared with what ``chime-broker policies`` prints for the config. ``apply`` never touches
the roles, so a role difference stays until an admin fixes the role."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.pool_proxy import PoolProxy
from tests.integration.test_plan_apply import _config, _shared_pool, mutations, run

IAM_MUTATIONS = (
    "CreateRole",
    "DeleteRole",
    "PutRolePolicy",
    "DeleteRolePolicy",
    "AttachRolePolicy",
    "DetachRolePolicy",
    "UpdateAssumeRolePolicy",
    "CreatePolicy",
    "CreatePolicyVersion",
)


@dataclass(frozen=True)
class Roles:
    config: str
    sts_role: str  # aws.sts.role_arn, the guests' role
    pool_role: str  # aws.cognito.role_arn
    custom_role: str  # google's custom_role_arn
    documents: dict[str, Any]
    iam: Any

    @property
    def names(self) -> list[str]:
        return [arn.rpartition("/")[2] for arn in (self.sts_role, self.pool_role, self.custom_role)]


def _role_arn(aws: AwsWorld, name: str) -> str:
    return f"arn:aws:iam::{aws.account_id}:role/{name}"


def _delete_role(iam: Any, name: str) -> None:
    try:
        names = iam.list_role_policies(RoleName=name)["PolicyNames"]
    except iam.exceptions.NoSuchEntityException:
        return
    for policy_name in names:
        iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
    for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
        iam.delete_policy(PolicyArn=attached["PolicyArn"])
    iam.delete_role(RoleName=name)


def _create_role(iam: Any, name: str, documents: dict[str, Any], *, managed: bool) -> None:
    iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(documents["user-role-trust-policy"]),
    )
    permissions = json.dumps(documents["user-role-permission-policy"])
    if managed:
        arn = iam.create_policy(PolicyName=f"{name}-chime", PolicyDocument=permissions)["Policy"][
            "Arn"
        ]
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)
    else:
        iam.put_role_policy(
            RoleName=name, PolicyName="chime-app-instance-user", PolicyDocument=permissions
        )


def _roles(
    aws: AwsWorld,
    proxy: PoolProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    managed: bool,
) -> Iterator[Roles]:
    pools = _shared_pool(aws, proxy, tmp_path)
    shared = next(pools)
    suffix = uuid.uuid4().hex[:8]
    sts_role = _role_arn(aws, f"broker-sts-users-{suffix}")
    pool_role = _role_arn(aws, f"broker-pool-users-{suffix}")
    custom_role = _role_arn(aws, f"broker-google-users-{suffix}")
    document = _config(aws, shared.pool_id)
    document["aws"]["cognito"]["role_arn"] = pool_role
    document["aws"]["sts"] = {"role_arn": sts_role}
    document["providers"][0]["custom_role_arn"] = custom_role
    document["providers"].append(
        {"name": "guests", "kind": "guest", "exchange": "sts", "allow_open_guests": True}
    )
    shared.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    config = str(shared.config_path)
    code, out, err = run(capsys, "policies", "--config", config)
    assert (code, err) == (0, "")
    documents = json.loads(out)
    roles = Roles(config, sts_role, pool_role, custom_role, documents, shared.iam)
    try:
        for name in roles.names:
            _create_role(shared.iam, name, documents, managed=managed)
        proxy.reset()
        yield roles
    finally:
        for name in roles.names:
            _delete_role(shared.iam, name)
        pools.close()


@pytest.fixture
def inline_roles(
    aws: AwsWorld, pool_aws: PoolProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Roles]:
    yield from _roles(aws, pool_aws, tmp_path, capsys, managed=False)


@pytest.fixture
def managed_roles(
    aws: AwsWorld, pool_aws: PoolProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Roles]:
    yield from _roles(aws, pool_aws, tmp_path, capsys, managed=True)


def iam_mutations(proxy: PoolProxy) -> list[str | None]:
    return [op for op in proxy.operations() if op in IAM_MUTATIONS]


def role_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("IAM role "))
    return lines[start:]


def test_roles_made_from_the_policies_output_match_after_apply(
    inline_roles: Roles, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inline_roles.config
    code, out, err = run(capsys, "apply", "--config", config, "--yes")
    assert (code, err) == (0, "")
    assert not any(line.startswith("IAM role ") for line in out.splitlines())
    pool_aws.reset()

    code, out, err = run(capsys, "plan", "--config", config, "--roles")
    assert (code, err) == (0, "")
    assert role_lines(out) == [
        f"IAM role {inline_roles.sts_role} (aws.sts.role_arn)",
        f"IAM role {inline_roles.custom_role} (provider google custom_role_arn)",
        f"IAM role {inline_roles.pool_role} (aws.cognito.role_arn)",
        "no role differences",
    ]
    # Without --roles, plan covers only the identity pool.
    code, out, err = run(capsys, "plan", "--config", config)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "no differences"
    assert "IAM role" not in out
    assert iam_mutations(pool_aws) == []
    assert mutations(pool_aws) == []


def test_a_permission_policy_without_the_tag_scope_is_a_difference_apply_leaves_alone(
    inline_roles: Roles, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inline_roles.config
    assert run(capsys, "apply", "--config", config, "--yes")[0] == 0
    name = inline_roles.pool_role.rpartition("/")[2]
    loose = json.loads(json.dumps(inline_roles.documents["user-role-permission-policy"]))
    app_instance = yaml.safe_load(Path(config).read_text())["chime"]["app_instance_arn"]
    tagged_user = next(r for r in loose["Statement"][1]["Resource"] if "${aws:PrincipalTag/" in r)
    loose["Statement"][1]["Resource"] = [f"{app_instance}/user/*", f"{app_instance}/channel/*"]
    inline_roles.iam.put_role_policy(
        RoleName=name, PolicyName="chime-app-instance-user", PolicyDocument=json.dumps(loose)
    )
    pool_aws.reset()

    code, out, err = run(capsys, "plan", "--config", config, "--roles")
    assert (code, err) == (2, "")
    lines = role_lines(out)
    assert lines[lines.index(f"IAM role {inline_roles.pool_role} (aws.cognito.role_arn)") + 1] == (
        "  ~ permission policy: statement for chime:Connect, chime:CreateChannel, "
        f"chime:CreateChannelBan (+28 more): Resource lacks {tagged_user}; "
        f"Resource has {app_instance}/user/* too"
    )
    assert lines[-2] == "1 role difference(s)"
    assert lines[-1] == (
        "apply does not change IAM roles: fix them with the documents from "
        f"`chime-broker policies --config {config}` or the template from "
        f"`chime-broker policies --config {config} --format cloudformation`"
    )

    code, out, err = run(capsys, "apply", "--config", config, "--yes")
    assert (code, err) == (0, "")
    assert iam_mutations(pool_aws) == []
    assert run(capsys, "plan", "--config", config, "--roles")[0] == 2


def test_a_trust_policy_without_tag_session_is_a_difference(
    inline_roles: Roles, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inline_roles.config
    assert run(capsys, "apply", "--config", config, "--yes")[0] == 0
    trust = json.loads(json.dumps(inline_roles.documents["user-role-trust-policy"]))
    [server] = [s for s in trust["Statement"] if "AWS" in s["Principal"]]
    server["Action"] = ["sts:AssumeRole", "sts:SetSourceIdentity"]
    name = inline_roles.sts_role.rpartition("/")[2]
    inline_roles.iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))

    code, out, err = run(capsys, "plan", "--config", config, "--roles")
    assert (code, err) == (2, "")
    lines = role_lines(out)
    assert lines[:2] == [
        f"IAM role {inline_roles.sts_role} (aws.sts.role_arn)",
        f"  ~ trust policy: statement for AWS {server['Principal']['AWS']}: "
        "Action lacks sts:TagSession",
    ]
    assert "1 role difference(s)" in lines


def test_a_missing_role_is_a_difference(
    inline_roles: Roles, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inline_roles.config
    assert run(capsys, "apply", "--config", config, "--yes")[0] == 0
    _delete_role(inline_roles.iam, inline_roles.custom_role.rpartition("/")[2])

    code, out, err = run(capsys, "plan", "--config", config, "--roles")
    assert (code, err) == (2, "")
    lines = role_lines(out)
    assert (
        lines[
            lines.index(f"IAM role {inline_roles.custom_role} (provider google custom_role_arn)")
            + 1
        ]
        == "  ~ role does not exist"
    )
    assert "1 role difference(s)" in lines


def test_a_managed_policy_with_the_same_statements_is_no_difference(
    managed_roles: Roles, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    config = managed_roles.config
    assert (
        managed_roles.iam.list_role_policies(RoleName=managed_roles.names[0])["PolicyNames"] == []
    )
    assert run(capsys, "apply", "--config", config, "--yes")[0] == 0
    code, out, err = run(capsys, "plan", "--config", config, "--roles")
    assert (code, err) == (0, "")
    assert role_lines(out)[-1] == "no role differences"
