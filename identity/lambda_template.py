"""A CloudFormation template that deploys the broker on AWS Lambda behind an HTTP API.

The roles are ``identity.policies``' own (``user_role_resource``, ``server_role_resources``):
the server role is the function's execution role and also gets what running on Lambda
needs: CloudWatch Logs, the table of a ``dynamodb://`` store, and the SSM parameters and
Secrets Manager secrets that the config's ``${ssm:…}`` and ``${secretsmanager:…}``
references name. A ``dynamodb://TABLE`` store's table is part of the stack; a Redis store
is reached through the subnets and security groups given as parameters. ``memory://`` and
``sqlite://`` keep state inside one instance, which Lambda instances cannot share, so they
are refused.

Every function is pure: the config and the YAML text in, a template dict out.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import yaml

from identity import policies
from identity.config.document import BrokerConfig
from identity.config.types import REGION
from identity.dynamodb_store import PARTITION_KEY, TTL_ATTRIBUTE, table_from_url

TARGETS: Final = ("lambda",)

RUNTIME: Final = "python3.12"
HANDLER: Final = "wsgi.lambda_handler"
MEMORY_MB: Final = 512
# botocore's standard retry mode makes up to three attempts of every AWS call (identity/aws.py).
AWS_ATTEMPTS: Final = 3
MIN_TIMEOUT: Final = 30
MAX_TIMEOUT: Final = 900
DEFAULT_CONFIG_PATH: Final = "config/broker.yaml"
FUNCTION_PRINCIPAL: Final = "lambda.amazonaws.com"

# What identity.dynamodb_store calls at run time (store init's DescribeTimeToLive is the
# admin's, not the broker's).
TABLE_ACTIONS: Final = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchGetItem",
)
SSM_ACTION: Final = "ssm:GetParameter"
SECRETS_ACTION: Final = "secretsmanager:GetSecretValue"

BASIC_EXECUTION_POLICY: Final = "service-role/AWSLambdaBasicExecutionRole"
VPC_ACCESS_POLICY: Final = "service-role/AWSLambdaVPCAccessExecutionRole"

REDIS_SCHEMES: Final = frozenset({"redis", "rediss"})
_UNSHARED_STORES: Final = {
    "memory": "memory:// keeps state inside one process",
    "sqlite": "sqlite:// keeps state on one machine's disk",
}

# The schemes whose values Lambda reads from AWS when it loads the config; ``$${`` is a
# literal ``${`` and references nothing.
_AWS_REFERENCE: Final = re.compile(r"\$\$\{|\$\{(ssm|secretsmanager):([^}]*)\}")
_REGION: Final = re.compile(REGION)


@dataclass(frozen=True)
class AwsReferences:
    """The SSM parameters and Secrets Manager secrets a config's references name."""

    ssm_parameters: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ssm_parameters or self.secrets)


def aws_references(text: str) -> AwsReferences:
    """The parameter names of ``${ssm:NAME}`` and the secret ids of
    ``${secretsmanager:ID[#key]}`` in the values of the YAML ``text`` (comments do not
    count), each once, in the order they first appear."""
    parameters: dict[str, None] = {}
    secrets: dict[str, None] = {}
    for value in _strings(yaml.safe_load(text)):
        for match in _AWS_REFERENCE.finditer(value):
            scheme, argument = match[1], match[2]
            if scheme == "ssm" and argument:
                parameters[argument] = None
            elif scheme == "secretsmanager" and argument.partition("#")[0]:
                secrets[argument.partition("#")[0]] = None
    return AwsReferences(tuple(parameters), tuple(secrets))


def function_timeout(config: BrokerConfig) -> int:
    """Seconds the function may run: every attempt of an AWS call at its connect and read
    timeouts, plus ten seconds; at least ``MIN_TIMEOUT``, at most Lambda's 900."""
    timeouts = config.aws.timeouts
    longest_call = AWS_ATTEMPTS * (timeouts.connect + timeouts.read)
    return min(MAX_TIMEOUT, max(MIN_TIMEOUT, math.ceil(longest_call) + 10))


def check_shared_store(config: BrokerConfig) -> None:
    """Raise ValueError when the config's store cannot be shared by Lambda instances."""
    scheme = config.store_scheme.lower()
    if scheme in _UNSHARED_STORES:
        raise ValueError(
            f"store: {_UNSHARED_STORES[scheme]}, and Lambda runs many instances that cannot "
            "share it: use dynamodb://TABLE (or redis:// in a VPC)"
        )


def lambda_template(config: BrokerConfig, references: AwsReferences) -> dict[str, Any]:
    """The whole template for ``config``; ``references`` are ``aws_references`` of its YAML.

    Raises ValueError for a store Lambda cannot use (``check_shared_store``) and for what
    ``identity.policies`` refuses.
    """
    check_shared_store(config)
    dynamodb = config.store_scheme.lower() == "dynamodb"
    redis = config.store_scheme.lower() in REDIS_SCHEMES

    parameters = dict(_CODE_PARAMETERS)
    conditions: dict[str, Any] = {}
    if redis:
        parameters.update(_VPC_PARAMETERS)
        conditions["InVpc"] = {
            "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SubnetIds"}]}, ""]}]
        }
    if references:
        parameters.update(_KMS_PARAMETERS)
        conditions["HasSecretsKmsKey"] = {
            "Fn::Not": [{"Fn::Equals": [{"Ref": "SecretsKmsKeyArn"}, ""]}]
        }

    resources: dict[str, Any] = {"UserRole": policies.user_role_resource(config)}
    resources.update(
        policies.server_role_resources(
            config, runtime_principal=policies.principal_element(FUNCTION_PRINCIPAL)
        )
    )
    resources["ServerRole"]["Properties"]["ManagedPolicyArns"] = _managed_policies(vpc=redis)
    function_policy = function_role_policy(config, references)
    if function_policy is not None:
        resources["FunctionRolePolicy"] = {
            "Type": "AWS::IAM::RolePolicy",
            "Properties": {
                "RoleName": {"Ref": "ServerRole"},
                "PolicyName": "chime-broker-lambda",
                "PolicyDocument": function_policy,
            },
        }
    if dynamodb:
        resources["StoreTable"] = store_table(config)
    role_policies = sorted(name for name in resources if name.endswith("RolePolicy"))
    resources["BrokerFunction"] = _function(config, depends_on=role_policies, vpc=redis)
    resources.update(_http_api())

    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": _description(config, redis=redis),
        "Parameters": parameters,
    }
    if conditions:
        template["Conditions"] = conditions
    template["Resources"] = resources
    template["Outputs"] = _outputs(dynamodb=dynamodb)
    # The module's constants stay the module's: the caller owns every part of the result.
    return copy.deepcopy(template)


def store_table(config: BrokerConfig) -> dict[str, Any]:
    """The ``dynamodb://TABLE`` store's table, as ``chime-broker store init`` creates it."""
    try:
        table = table_from_url(config.store)
    except ValueError as e:
        raise ValueError(f"store: {e}") from None
    return {
        "Type": "AWS::DynamoDB::Table",
        # Sessions and caches only: nothing outlives the stack.
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "TableName": table,
            "AttributeDefinitions": [{"AttributeName": PARTITION_KEY, "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST",
            "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        },
    }


def function_role_policy(
    config: BrokerConfig, references: AwsReferences
) -> policies.PolicyDocument | None:
    """What the function needs beyond the server role's policy and the managed Lambda
    policies: its store's table and the parameters and secrets its config reads; None when
    it needs neither."""
    statements: list[Any] = []
    if config.store_scheme.lower() == "dynamodb":
        statements.append(
            _statement("StoreTable", TABLE_ACTIONS, [{"Fn::GetAtt": ["StoreTable", "Arn"]}])
        )
    region = reference_region(config)
    if references.ssm_parameters:
        statements.append(
            _statement(
                "ConfigParameters",
                [SSM_ACTION],
                [ssm_parameter_arn(name, region) for name in references.ssm_parameters],
            )
        )
    if references.secrets:
        statements.append(
            _statement(
                "ConfigSecrets",
                [SECRETS_ACTION],
                [secret_arn(secret, region) for secret in references.secrets],
            )
        )
    if references:
        # A customer managed key needs kms:Decrypt; only through SSM and Secrets Manager.
        decrypt = _statement("DecryptConfigSecrets", ["kms:Decrypt"], [{"Ref": "SecretsKmsKeyArn"}])
        decrypt["Condition"] = {
            "StringEquals": {
                "kms:ViaService": [
                    _substituted(f"{service}.{region}.amazonaws.com")
                    for region in _regions(region, references)
                    for service in ("ssm", "secretsmanager")
                ]
            }
        }
        statements.append({"Fn::If": ["HasSecretsKmsKey", decrypt, {"Ref": "AWS::NoValue"}]})
    if not statements:
        return None
    return {"Version": policies.POLICY_VERSION, "Statement": statements}


def reference_region(config: BrokerConfig) -> str:
    """Where the references are read: ``aws.region``, or, when it is an ``${env:…}`` that
    only Lambda sets (``${env:AWS_REGION}``), the stack's region as ``${AWS::Region}``."""
    region = config.aws.region
    return region if _REGION.fullmatch(region) else "${AWS::Region}"


def ssm_parameter_arn(name: str, region: str) -> str | dict[str, Any]:
    """The ARN of the parameter ``${ssm:NAME}`` reads in ``region`` of the stack's account."""
    if name.startswith("arn:"):
        return name
    return {
        "Fn::Sub": f"arn:${{AWS::Partition}}:ssm:{region}:${{AWS::AccountId}}:parameter/"
        + name.lstrip("/")
    }


def secret_arn(secret_id: str, region: str) -> str | dict[str, Any]:
    """The ARN of the secret ``${secretsmanager:ID}`` reads (an ARN names its own region);
    a name matches whatever six characters Secrets Manager appended to the ARN."""
    if secret_id.startswith("arn:"):
        return secret_id
    return {
        "Fn::Sub": f"arn:${{AWS::Partition}}:secretsmanager:{region}:${{AWS::AccountId}}:"
        f"secret:{secret_id}-??????"
    }


def _regions(config_region: str, references: AwsReferences) -> list[str]:
    arn_regions = [
        name.split(":")[3]
        for name in references.ssm_parameters + references.secrets
        if name.startswith("arn:")
    ]
    return list(dict.fromkeys([config_region, *arn_regions]))


_FUNCTION_ARN: Final = {"Fn::GetAtt": ["BrokerFunction", "Arn"]}

_CODE_PARAMETERS: Final[dict[str, Any]] = {
    "CodeS3Bucket": {
        "Type": "String",
        "Description": "S3 bucket of the function's zip: the wheel installed for Lambda, "
        "wsgi.py and the config",
    },
    "CodeS3Key": {"Type": "String", "Description": "S3 key of the function's zip"},
    "ConfigPath": {
        "Type": "String",
        "Default": DEFAULT_CONFIG_PATH,
        "Description": "BROKER_CONFIG: the config file's path inside the zip",
    },
}

_VPC_PARAMETERS: Final[dict[str, Any]] = {
    "SubnetIds": {
        "Type": "CommaDelimitedList",
        "Default": "",
        "Description": "Subnets that reach Redis (and, through a NAT gateway, AWS and the "
        "identity providers); empty: the function runs outside any VPC",
    },
    "SecurityGroupIds": {
        "Type": "CommaDelimitedList",
        "Default": "",
        "Description": "Security groups of the function in the VPC, allowed into Redis",
    },
}

_KMS_PARAMETERS: Final[dict[str, Any]] = {
    "SecretsKmsKeyArn": {
        "Type": "String",
        "Default": "",
        "Description": "The customer managed KMS key of the config's SecureString parameters "
        "and secrets, decrypted only through SSM and Secrets Manager; empty: AWS managed keys",
    },
}


def _managed_policies(*, vpc: bool) -> list[Any]:
    arns: list[Any] = [_aws_managed_policy(BASIC_EXECUTION_POLICY)]
    if vpc:
        arns.append(
            {"Fn::If": ["InVpc", _aws_managed_policy(VPC_ACCESS_POLICY), {"Ref": "AWS::NoValue"}]}
        )
    return arns


def _function(config: BrokerConfig, *, depends_on: list[str], vpc: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "Description": "Chime identity broker",
        "Runtime": RUNTIME,
        "Handler": HANDLER,
        "Code": {"S3Bucket": {"Ref": "CodeS3Bucket"}, "S3Key": {"Ref": "CodeS3Key"}},
        "Role": {"Fn::GetAtt": ["ServerRole", "Arn"]},
        "MemorySize": MEMORY_MB,
        "Timeout": function_timeout(config),
        "Environment": {"Variables": {"BROKER_CONFIG": {"Ref": "ConfigPath"}}},
    }
    if vpc:
        properties["VpcConfig"] = {
            "Fn::If": [
                "InVpc",
                {
                    "SubnetIds": {"Ref": "SubnetIds"},
                    "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
                },
                {"Ref": "AWS::NoValue"},
            ]
        }
    # The broker reaches its store at start-up: its permissions must exist before it runs.
    return {"Type": "AWS::Lambda::Function", "DependsOn": depends_on, "Properties": properties}


def _http_api() -> dict[str, Any]:
    """An HTTP API whose ``$default`` route sends every request to the function with
    payload format 2.0."""
    return {
        "HttpApi": {
            "Type": "AWS::ApiGatewayV2::Api",
            "Properties": {"Name": {"Ref": "AWS::StackName"}, "ProtocolType": "HTTP"},
        },
        "HttpApiIntegration": {
            "Type": "AWS::ApiGatewayV2::Integration",
            "Properties": {
                "ApiId": {"Ref": "HttpApi"},
                "IntegrationType": "AWS_PROXY",
                "IntegrationUri": _FUNCTION_ARN,
                "PayloadFormatVersion": "2.0",
            },
        },
        "HttpApiRoute": {
            "Type": "AWS::ApiGatewayV2::Route",
            "Properties": {
                "ApiId": {"Ref": "HttpApi"},
                "RouteKey": "$default",
                "Target": {"Fn::Join": ["/", ["integrations", {"Ref": "HttpApiIntegration"}]]},
            },
        },
        "HttpApiStage": {
            "Type": "AWS::ApiGatewayV2::Stage",
            "Properties": {
                "ApiId": {"Ref": "HttpApi"},
                "StageName": "$default",
                "AutoDeploy": True,
            },
        },
        "HttpApiInvokePermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": {"Ref": "BrokerFunction"},
                "Principal": "apigateway.amazonaws.com",
                "SourceArn": {
                    "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:"
                    "${AWS::AccountId}:${HttpApi}/*"
                },
            },
        },
    }


def _outputs(*, dynamodb: bool) -> dict[str, Any]:
    outputs: dict[str, Any] = {
        "ApiUrl": {
            "Description": "The broker's URL: service.public_url must be this URL, or a custom "
            "domain mapped to the API",
            "Value": {"Fn::GetAtt": ["HttpApi", "ApiEndpoint"]},
        },
        "FunctionName": {
            "Description": "The broker's function",
            "Value": {"Ref": "BrokerFunction"},
        },
        "UserRoleArn": {
            "Description": "aws.sts.role_arn, and the identity pool's authenticated role",
            "Value": {"Fn::GetAtt": ["UserRole", "Arn"]},
        },
        "ServerRoleArn": {
            "Description": "The role the broker runs as",
            "Value": {"Fn::GetAtt": ["ServerRole", "Arn"]},
        },
    }
    if dynamodb:
        outputs["StoreTableName"] = {
            "Description": "The store's DynamoDB table",
            "Value": {"Ref": "StoreTable"},
        }
    return outputs


def _description(config: BrokerConfig, *, redis: bool) -> str:
    text = (
        "Chime identity broker on AWS Lambda behind an HTTP API. service.public_url "
        f"({config.service.public_url}) must be the ApiUrl output or a custom domain mapped "
        "to the API."
    )
    if config.store_scheme.lower() == "dynamodb":
        text += f" Deploy it in aws.region ({config.aws.region}): the broker opens its table there."
    if redis:
        text += (
            " Redis store: set SubnetIds and SecurityGroupIds to reach it in its VPC; the "
            "subnets need a NAT gateway for AWS and the identity providers."
        )
    return text


def _substituted(text: str) -> str | dict[str, Any]:
    """``text`` with the pseudo parameters it names (``${AWS::Region}``) substituted."""
    return {"Fn::Sub": text} if "${" in text else text


def _aws_managed_policy(name: str) -> dict[str, Any]:
    return {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/" + name}


def _statement(sid: str, actions: Any, resources: list[Any]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resources}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
