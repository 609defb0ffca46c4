"""What the demo and the tests create in the in-process AWS before the broker starts: an
identity pool that knows the broker's developer provider and the social login keys, the
user role whose policy scopes Chime to one user, and the server role."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
DEVELOPER_PROVIDER_NAME = "login.test.chat"
APP_INSTANCE_ARN = f"arn:aws:chime:{REGION}:{ACCOUNT_ID}:app-instance/test-app-instance"
USER_ROLE = "ChimeMessagingSampleAppUserRole"
SERVER_ROLE = "ChimeMessagingSampleAppServerRole"
SUPPORTED_LOGINS = {
    "accounts.google.com": "web-app.apps.googleusercontent.com",
    "appleid.apple.com": "com.example.chat",
    "graph.facebook.com": "1234567890",
    "www.amazon.com": "amzn1.application.example",
}


@dataclass(frozen=True)
class AwsResources:
    """The ARNs and ids the broker's config needs."""

    endpoint_url: str
    region: str
    account_id: str
    identity_pool_id: str
    developer_provider_name: str
    user_role_arn: str
    server_role_arn: str
    app_instance_arn: str


def _trust(principal: dict[str, Any], actions: list[str]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": principal, "Action": actions}],
        }
    )


def bootstrap(endpoint_url: str, *, region: str = REGION) -> AwsResources:
    """Create the pool and roles over HTTP in the AWS at ``endpoint_url``."""
    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (the in-process AWS takes any key)
        region_name=region,
    )
    iam = session.client("iam", endpoint_url=endpoint_url)
    cognito = session.client("cognito-identity", endpoint_url=endpoint_url)
    server_role = iam.create_role(
        RoleName=SERVER_ROLE,
        AssumeRolePolicyDocument=_trust(
            {"Service": ["ec2.amazonaws.com", "ecs-tasks.amazonaws.com"]}, ["sts:AssumeRole"]
        ),
    )["Role"]["Arn"]
    user_role = iam.create_role(
        RoleName=USER_ROLE,
        AssumeRolePolicyDocument=_trust(
            {"AWS": server_role}, ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
        ),
    )["Role"]["Arn"]
    pool = cognito.create_identity_pool(
        IdentityPoolName="chime_broker_demo",
        AllowUnauthenticatedIdentities=False,
        DeveloperProviderName=DEVELOPER_PROVIDER_NAME,
        SupportedLoginProviders=SUPPORTED_LOGINS,
    )
    return AwsResources(
        endpoint_url=endpoint_url,
        region=region,
        account_id=ACCOUNT_ID,
        identity_pool_id=pool["IdentityPoolId"],
        developer_provider_name=DEVELOPER_PROVIDER_NAME,
        user_role_arn=user_role,
        server_role_arn=server_role,
        app_instance_arn=APP_INSTANCE_ARN,
    )
