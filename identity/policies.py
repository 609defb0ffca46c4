"""The IAM documents an admin creates for a broker config, as plain dicts.

Two roles are involved. The *user role* is what vended credentials act as: its permission
policy lets the holder act as exactly one app instance user, the one named by the session's
principal tag ``chime.user_tag``; its trust policy admits the broker's server role (``sts``
exchange) and the identity pool (``cognito`` / ``cognito_developer``). The *server role* is
what the broker itself runs as: it may assume the user role, get developer-identity tokens,
provision app instance users and look up the messaging endpoint, each only when the config
uses it.

Every function is pure. An ARN argument may be a string or a CloudFormation intrinsic (such
as ``{"Fn::GetAtt": ["ServerRole", "Arn"]}``), so the template reuses the same builders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

PolicyDocument = dict[str, Any]
# An ARN, or a CloudFormation intrinsic that evaluates to one.
ArnValue = str | Mapping[str, Any]

POLICY_VERSION: Final = "2012-10-17"

# Every action takes ChimeBearer, so IAM checks it against the one app instance user ARN.
# Checked against botocore's chime-sdk-messaging model and the IAM service reference.
APP_INSTANCE_USER_ACTIONS: Final = (
    "chime:SendChannelMessage",
    "chime:ListChannelMessages",
    "chime:GetChannelMessage",
    "chime:GetChannelMessageStatus",
    "chime:UpdateChannelMessage",
    "chime:RedactChannelMessage",
    "chime:DeleteChannelMessage",
    "chime:CreateChannelMembership",
    "chime:DeleteChannelMembership",
    "chime:ListChannelMemberships",
    "chime:DescribeChannelMembership",
    "chime:DescribeChannelMembershipForAppInstanceUser",
    "chime:ListChannelMembershipsForAppInstanceUser",
    "chime:CreateChannelModerator",
    "chime:DeleteChannelModerator",
    "chime:ListChannelModerators",
    "chime:DescribeChannelModerator",
    "chime:DescribeChannelModeratedByAppInstanceUser",
    "chime:ListChannelsModeratedByAppInstanceUser",
    "chime:CreateChannelBan",
    "chime:DeleteChannelBan",
    "chime:ListChannelBans",
    "chime:DescribeChannelBan",
    "chime:CreateChannel",
    "chime:DeleteChannel",
    "chime:UpdateChannel",
    "chime:DescribeChannel",
    "chime:ListChannels",
    "chime:ListSubChannels",
    "chime:UpdateChannelReadMarker",
    "chime:Connect",
)

# IAM authorizes these against channel-flow ARNs as well. ChannelFlowCallback is left out on
# purpose: it takes no ChimeBearer, so it would let any user settle any pending message.
CHANNEL_FLOW_ACTIONS: Final = (
    "chime:ListChannelFlows",
    "chime:DescribeChannelFlow",
    "chime:AssociateChannelFlow",
    "chime:DisassociateChannelFlow",
)

MESSAGING_ENDPOINT_ACTION: Final = "chime:GetMessagingSessionEndpoint"

STS_TRUST_ACTIONS: Final = ("sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity")
COGNITO_TRUST_ACTIONS: Final = ("sts:AssumeRoleWithWebIdentity", "sts:TagSession")
COGNITO_PRINCIPAL: Final = "cognito-identity.amazonaws.com"

# IAM has no resource-level permissions for CreateAppInstanceUser: it needs Resource "*".
CREATE_USER_ACTION: Final = "chime:CreateAppInstanceUser"
MAINTAIN_USER_ACTIONS: Final = ("chime:DescribeAppInstanceUser", "chime:UpdateAppInstanceUser")
DEVELOPER_IDENTITY_ACTION: Final = "cognito-identity:GetOpenIdTokenForDeveloperIdentity"

USER_ROLE_PERMISSION_POLICY: Final = "user-role-permission-policy"
USER_ROLE_TRUST_POLICY: Final = "user-role-trust-policy"
SERVER_ROLE_POLICY: Final = "server-role-policy"
SERVER_ROLE_TRUST_POLICY: Final = "server-role-trust-policy"

DEFAULT_SERVER_ROLE_NAME: Final = "chime-broker-server"
DEFAULT_MAX_SESSION_DURATION: Final = 3600

STS_MODES: Final = frozenset({"sts"})
COGNITO_MODES: Final = frozenset({"cognito", "cognito_developer"})


class _CognitoSettings(Protocol):
    @property
    def identity_pool_id(self) -> str: ...


class _StsSettings(Protocol):
    @property
    def role_arn(self) -> str | None: ...
    @property
    def duration_seconds(self) -> int: ...


class _AwsSettings(Protocol):
    @property
    def cognito(self) -> _CognitoSettings | None: ...
    @property
    def sts(self) -> _StsSettings | None: ...


class _ChimeSettings(Protocol):
    @property
    def app_instance_arn(self) -> str: ...
    @property
    def user_tag(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def provision_users(self) -> bool: ...
    @property
    def messaging_endpoint(self) -> bool: ...


class _ProviderSettings(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def exchange(self) -> str: ...
    @property
    def role_arn(self) -> str | None: ...


class BrokerSettings(Protocol):
    """The parts of ``identity.config.BrokerConfig`` that the policies depend on."""

    @property
    def aws(self) -> _AwsSettings: ...
    @property
    def chime(self) -> _ChimeSettings: ...
    @property
    def providers(self) -> Sequence[_ProviderSettings]: ...


def principal_tag_variable(user_tag: str) -> str:
    """The IAM policy variable that IAM replaces with the session's ``user_tag`` value."""
    return "${aws:PrincipalTag/" + user_tag + "}"


def exchange_modes(config: BrokerSettings) -> frozenset[str]:
    """The ``exchange`` modes that at least one provider uses."""
    return frozenset(provider.exchange for provider in config.providers)


def uses_sts(config: BrokerSettings) -> bool:
    """Whether any provider vends through STS AssumeRole, which the server role performs."""
    return bool(exchange_modes(config) & STS_MODES)


def uses_cognito(config: BrokerSettings) -> bool:
    """Whether any provider vends through the identity pool."""
    return bool(exchange_modes(config) & COGNITO_MODES)


def needs_server_role(config: BrokerSettings) -> bool:
    """Whether the broker makes any AWS call that needs permissions of its own.

    With only ``exchange: cognito``, no provisioning and no messaging endpoint, the broker
    calls only Cognito's unauthenticated GetId and GetCredentialsForIdentity.
    """
    return bool(_server_statements(config, user_role_arns=sts_user_role_arns(config)))


def sts_user_role_arns(config: BrokerSettings) -> list[str]:
    """Every role that STS providers assume (per-provider ``role_arn`` or ``aws.sts.role_arn``),
    de-duplicated, in first-use order."""
    default = config.aws.sts.role_arn if config.aws.sts is not None else None
    arns: list[str] = []
    for provider in config.providers:
        if provider.exchange not in STS_MODES:
            continue
        arn = provider.role_arn or default
        if arn is None:
            raise ValueError(f"provider {provider.name!r} uses exchange: sts without a role_arn")
        if arn not in arns:
            arns.append(arn)
    return arns


def partition_of(config: BrokerSettings) -> str:
    """The AWS partition (``aws``, ``aws-cn``, ...) taken from the app instance ARN."""
    return config.chime.app_instance_arn.split(":")[1]


def default_server_role_arn(config: BrokerSettings) -> str:
    """The server role ARN assumed when none is given: a role named ``chime-broker-server`` in
    the app instance's account."""
    return (
        f"arn:{partition_of(config)}:iam::{config.chime.account_id}:role/{DEFAULT_SERVER_ROLE_NAME}"
    )


def identity_pool_arn(config: BrokerSettings) -> str:
    """The identity pool's ARN; the pool id begins with the pool's region."""
    pool_id = _identity_pool_id(config)
    region = pool_id.split(":", 1)[0]
    return (
        f"arn:{partition_of(config)}:cognito-identity:{region}:{config.chime.account_id}:"
        f"identitypool/{pool_id}"
    )


def user_role_permission_policy(config: BrokerSettings) -> PolicyDocument:
    """What vended credentials may do: act as the app instance user whose id is the session's
    ``user_tag`` principal tag, in channels of the configured app instance."""
    app_instance = config.chime.app_instance_arn
    own_user = f"{app_instance}/user/{principal_tag_variable(config.chime.user_tag)}"
    channels = f"{app_instance}/channel/*"
    return _policy(
        [
            _statement("MessagingSessionEndpoint", [MESSAGING_ENDPOINT_ACTION], "*"),
            _statement("ActAsOwnAppInstanceUser", APP_INSTANCE_USER_ACTIONS, [own_user, channels]),
            _statement(
                "ChannelFlowsOfOwnChannels",
                CHANNEL_FLOW_ACTIONS,
                [own_user, channels, f"{app_instance}/channel-flow/*"],
            ),
        ]
    )


def user_role_trust_policy(
    config: BrokerSettings, *, server_role_arn: ArnValue | None
) -> PolicyDocument:
    """Who may become the user role, one statement per exchange family the config uses.

    ``sts``: the server role, only with the ``user_tag`` session tag set. ``cognito`` and
    ``cognito_developer``: the configured identity pool, for authenticated identities only.
    ``server_role_arn`` is required when a provider uses ``sts``.
    """
    statements: list[dict[str, Any]] = []
    if uses_sts(config):
        if server_role_arn is None:
            raise ValueError("server_role_arn is required when a provider uses exchange: sts")
        statements.append(
            {
                "Sid": "BrokerServerRoleWithUserTag",
                "Effect": "Allow",
                "Principal": {"AWS": server_role_arn},
                "Action": list(STS_TRUST_ACTIONS),
                "Condition": {
                    "Null": {f"aws:RequestTag/{config.chime.user_tag}": "false"},
                },
            }
        )
    if uses_cognito(config):
        statements.append(
            {
                "Sid": "IdentityPoolAuthenticatedIdentities",
                "Effect": "Allow",
                "Principal": {"Federated": COGNITO_PRINCIPAL},
                "Action": list(COGNITO_TRUST_ACTIONS),
                "Condition": {
                    "StringEquals": {f"{COGNITO_PRINCIPAL}:aud": _identity_pool_id(config)},
                    "ForAnyValue:StringLike": {f"{COGNITO_PRINCIPAL}:amr": "authenticated"},
                },
            }
        )
    if not statements:
        raise ValueError("no provider is configured, so nothing may assume the user role")
    return _policy(statements)


def server_role_policy(
    config: BrokerSettings, *, user_role_arns: Sequence[ArnValue] | None = None
) -> PolicyDocument | None:
    """What the broker itself may do, or None when it needs no permissions at all.

    ``user_role_arns`` defaults to ``sts_user_role_arns(config)``.
    """
    arns = list(sts_user_role_arns(config) if user_role_arns is None else user_role_arns)
    statements = _server_statements(config, user_role_arns=arns)
    return _policy(statements) if statements else None


def server_role_trust_policy(broker_principal: ArnValue) -> PolicyDocument:
    """Who may run as the server role: a service principal (a name ending in
    ``.amazonaws.com``, such as ``ecs-tasks.amazonaws.com``) or an IAM principal ARN."""
    return _runtime_trust_policy(principal_element(broker_principal))


def principal_element(principal: ArnValue) -> dict[str, Any]:
    """``{"Service": ...}`` for a service principal name, else ``{"AWS": ...}``."""
    if isinstance(principal, str) and principal.endswith(".amazonaws.com"):
        return {"Service": principal}
    return {"AWS": principal}


def all_documents(
    config: BrokerSettings,
    *,
    server_role_arn: str | None = None,
    broker_principal: str | None = None,
) -> dict[str, PolicyDocument]:
    """Every policy document the config needs, keyed by document name.

    ``server_role_arn`` defaults to ``default_server_role_arn(config)``; ``broker_principal``
    (who runs the broker, see ``server_role_trust_policy``) defaults to the account root.
    The server role's documents are left out when ``needs_server_role`` is false.
    """
    documents: dict[str, PolicyDocument] = {
        USER_ROLE_PERMISSION_POLICY: user_role_permission_policy(config),
    }
    server_arn = server_role_arn or default_server_role_arn(config)
    documents[USER_ROLE_TRUST_POLICY] = user_role_trust_policy(config, server_role_arn=server_arn)
    server_policy = server_role_policy(config)
    if server_policy is not None:
        documents[SERVER_ROLE_POLICY] = server_policy
        documents[SERVER_ROLE_TRUST_POLICY] = server_role_trust_policy(
            broker_principal or f"arn:{partition_of(config)}:iam::{config.chime.account_id}:root"
        )
    return documents


def cloudformation_template(config: BrokerSettings) -> dict[str, Any]:
    """A CloudFormation template (JSON) that creates the user role and, when needed, the
    server role, with the same documents as ``all_documents``.

    When ``aws.sts.role_arn`` is set the user role gets that name and path, so the stack
    creates the role the config already names. ``${aws:PrincipalTag/...}`` stays literal:
    the template uses no Fn::Sub. Parameters ``BrokerPrincipalType`` and
    ``BrokerPrincipal`` say who may use the server role.
    """
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "IAM roles for the Chime identity broker",
    }
    resources: dict[str, Any] = {"UserRole": user_role_resource(config)}
    outputs: dict[str, Any] = {
        "UserRoleArn": {
            "Description": "aws.sts.role_arn, and the identity pool's authenticated role",
            "Value": _get_att("UserRole"),
        }
    }
    if needs_server_role(config):
        template["Parameters"] = {
            "BrokerPrincipalType": {
                "Type": "String",
                "AllowedValues": ["AWS", "Service"],
                "Default": "AWS",
                "Description": "Service: BrokerPrincipal is a service principal such as "
                "ecs-tasks.amazonaws.com; AWS: an IAM principal ARN",
            },
            "BrokerPrincipal": {
                "Type": "String",
                "Default": "",
                "Description": "Who runs the broker and may use the server role; empty "
                "with type AWS: this account's root",
            },
        }
        template["Conditions"] = {
            "BrokerIsService": {"Fn::Equals": [{"Ref": "BrokerPrincipalType"}, "Service"]},
            "BrokerIsAccountRoot": {"Fn::Equals": [{"Ref": "BrokerPrincipal"}, ""]},
        }
        resources.update(server_role_resources(config, runtime_principal=_parameter_principal()))
        outputs["ServerRoleArn"] = {
            "Description": "The role the broker runs as",
            "Value": _get_att("ServerRole"),
        }
    template["Resources"] = resources
    template["Outputs"] = outputs
    return template


def user_role_resource(config: BrokerSettings) -> dict[str, Any]:
    """The ``UserRole`` resource: ``user_role_trust_policy`` (the server role is the stack's
    ``ServerRole``) and ``user_role_permission_policy``, named as ``aws.sts.role_arn``."""
    properties: dict[str, Any] = {
        "Description": "Credentials vended by the Chime identity broker: one app instance "
        "user each",
        "AssumeRolePolicyDocument": user_role_trust_policy(
            config, server_role_arn=_get_att("ServerRole")
        ),
        "Policies": [
            {
                "PolicyName": "chime-app-instance-user",
                "PolicyDocument": user_role_permission_policy(config),
            }
        ],
    }
    sts = config.aws.sts
    if sts is not None and sts.role_arn is not None:
        path, name = _role_path_and_name(sts.role_arn)
        properties.update({"RoleName": name, "Path": path})
        # AssumeRole refuses a DurationSeconds above the role's maximum (default one hour).
        if sts.duration_seconds > DEFAULT_MAX_SESSION_DURATION:
            properties["MaxSessionDuration"] = sts.duration_seconds
    return {"Type": "AWS::IAM::Role", "Properties": properties}


def server_role_resources(
    config: BrokerSettings, *, runtime_principal: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``ServerRole`` resource, which ``runtime_principal`` (a policy ``Principal``
    element, see ``principal_element``) may assume, and ``ServerRolePolicy`` with
    ``server_role_policy``'s statements when the broker needs any."""
    # The stack's user role stands in for aws.sts.role_arn; other STS roles are the admin's.
    named = config.aws.sts.role_arn if config.aws.sts is not None else None
    other_user_roles = [arn for arn in sts_user_role_arns(config) if arn != named]
    resources: dict[str, Any] = {
        "ServerRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "The Chime identity broker's own role",
                "AssumeRolePolicyDocument": _runtime_trust_policy(runtime_principal),
            },
        },
    }
    policy = server_role_policy(config, user_role_arns=[_get_att("UserRole"), *other_user_roles])
    if policy is not None:
        # A separate resource: inline Policies on ServerRole would make the two roles
        # reference each other's ARNs, a dependency cycle.
        resources["ServerRolePolicy"] = {
            "Type": "AWS::IAM::RolePolicy",
            "Properties": {
                "RoleName": {"Ref": "ServerRole"},
                "PolicyName": "chime-broker-server",
                "PolicyDocument": policy,
            },
        }
    return resources


def _parameter_principal() -> dict[str, Any]:
    """The server role's runtime principal from the parameters ``BrokerPrincipalType`` and
    ``BrokerPrincipal``."""
    account_root = {
        "Fn::Join": [
            "",
            ["arn:", {"Ref": "AWS::Partition"}, ":iam::", {"Ref": "AWS::AccountId"}, ":root"],
        ]
    }
    return {
        "Fn::If": [
            "BrokerIsService",
            {"Service": {"Ref": "BrokerPrincipal"}},
            {"AWS": {"Fn::If": ["BrokerIsAccountRoot", account_root, {"Ref": "BrokerPrincipal"}]}},
        ]
    }


def _server_statements(
    config: BrokerSettings, *, user_role_arns: Sequence[ArnValue]
) -> list[dict[str, Any]]:
    modes = exchange_modes(config)
    chime = config.chime
    statements: list[dict[str, Any]] = []
    if modes & STS_MODES:
        statements.append(_statement("AssumeUserRole", STS_TRUST_ACTIONS, list(user_role_arns)))
    if "cognito_developer" in modes:
        statements.append(
            _statement(
                "DeveloperAuthenticatedIdentities",
                [DEVELOPER_IDENTITY_ACTION],
                identity_pool_arn(config),
            )
        )
    if chime.provision_users:
        statements.append(_statement("CreateAppInstanceUsers", [CREATE_USER_ACTION], "*"))
        statements.append(
            _statement(
                "MaintainAppInstanceUsers",
                MAINTAIN_USER_ACTIONS,
                [f"{chime.app_instance_arn}/user/*"],
            )
        )
    if chime.messaging_endpoint:
        statements.append(_statement("MessagingSessionEndpoint", [MESSAGING_ENDPOINT_ACTION], "*"))
    return statements


def _runtime_trust_policy(principal: Mapping[str, Any]) -> PolicyDocument:
    return _policy(
        [
            {
                "Sid": "BrokerRuntime",
                "Effect": "Allow",
                "Principal": principal,
                "Action": "sts:AssumeRole",
            }
        ]
    )


def _identity_pool_id(config: BrokerSettings) -> str:
    if config.aws.cognito is None:
        raise ValueError("aws.cognito.identity_pool_id is required for the cognito exchanges")
    return config.aws.cognito.identity_pool_id


def _role_path_and_name(role_arn: str) -> tuple[str, str]:
    # arn:aws:iam::ACCOUNT:role/PATH/NAME -> ("/PATH/", "NAME")
    resource = role_arn.split(":", 5)[5].removeprefix("role")
    path, _, name = resource.rpartition("/")
    return path + "/", name


def _get_att(logical_id: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


def _statement(
    sid: str, actions: Iterable[str], resources: str | Sequence[ArnValue]
) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": list(actions),
        "Resource": resources if isinstance(resources, str) else list(resources),
    }


def _policy(statements: list[dict[str, Any]]) -> PolicyDocument:
    return {"Version": POLICY_VERSION, "Statement": statements}
