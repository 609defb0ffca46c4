"""What the demo and the tests create in the in-process AWS (moto) before the broker starts:
an identity pool that knows the broker's developer provider and the social login keys, the
user role whose policy scopes Chime to one tagged user, and the server role."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "us-east-1"
DEVELOPER_PROVIDER_NAME = "login.test.chat"
USER_ROLE_NAME = "ChimeMessagingSampleAppUserRole"
SERVER_ROLE_NAME = "ChimeMessagingSampleAppServerRole"
APP_INSTANCE_ARN = "arn:aws:chime:us-east-1:123456789012:app-instance/test-app-instance"
USER_TAG = "my_applications_user_id"
SOCIAL_LOGIN_PROVIDERS = {
    "accounts.google.com": "1234-web.apps.googleusercontent.com",
    "appleid.apple.com": "chat.test.web",
    "graph.facebook.com": "111122223333",
    "www.amazon.com": "amzn1.application.test",
}


@dataclass(frozen=True)
class AwsResources:
    """The ids and ARNs the broker's config needs."""

    endpoint_url: str
    region: str
    account_id: str
    identity_pool_id: str
    developer_provider_name: str
    user_role_arn: str
    server_role_arn: str
    app_instance_arn: str = APP_INSTANCE_ARN


def _user_role_trust_policy(server_role_arn: str, identity_pool_id: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerVendsWithSessionTags",
                "Effect": "Allow",
                "Principal": {"AWS": server_role_arn},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            },
            {
                "Sid": "CognitoIdentityPoolUsers",
                "Effect": "Allow",
                "Principal": {"Federated": "cognito-identity.amazonaws.com"},
                "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": {"cognito-identity.amazonaws.com:aud": identity_pool_id},
                    "ForAnyValue:StringLike": {
                        "cognito-identity.amazonaws.com:amr": "authenticated"
                    },
                },
            },
        ],
    }


def _user_role_permissions(app_instance_arn: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "chime:SendChannelMessage",
                    "chime:ListChannelMessages",
                    "chime:Connect",
                ],
                "Resource": [f"{app_instance_arn}/user/${{aws:PrincipalTag/{USER_TAG}}}"],
            }
        ],
    }


_SERVER_ROLE_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {
                "Service": ["ecs-tasks.amazonaws.com", "lambda.amazonaws.com", "ec2.amazonaws.com"]
            },
            "Action": "sts:AssumeRole",
        }
    ],
}


def _server_role_permissions(
    user_role_arn: str, identity_pool_arn: str, app_instance_arn: str
) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                "Resource": user_role_arn,
            },
            {
                "Effect": "Allow",
                "Action": "cognito-identity:GetOpenIdTokenForDeveloperIdentity",
                "Resource": identity_pool_arn,
            },
            {
                "Effect": "Allow",
                "Action": [
                    "chime:CreateAppInstanceUser",
                    "chime:DescribeAppInstanceUser",
                    "chime:GetMessagingSessionEndpoint",
                ],
                "Resource": [app_instance_arn, f"{app_instance_arn}/user/*"],
            },
        ],
    }


def bootstrap(endpoint_url: str, *, region: str = REGION) -> AwsResources:
    """Create the identity pool and both roles over HTTP in the AWS at ``endpoint_url``."""
    session = boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (the in-process AWS takes any key)
        region_name=region,
    )
    cognito = session.client("cognito-identity", endpoint_url=endpoint_url)
    iam = session.client("iam", endpoint_url=endpoint_url)
    pool = cognito.create_identity_pool(
        IdentityPoolName="ChimeMessagingTestPool",
        AllowUnauthenticatedIdentities=False,
        DeveloperProviderName=DEVELOPER_PROVIDER_NAME,
        SupportedLoginProviders=SOCIAL_LOGIN_PROVIDERS,
    )
    identity_pool_id = pool["IdentityPoolId"]

    server_role = iam.create_role(
        RoleName=SERVER_ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(_SERVER_ROLE_TRUST_POLICY),
        Description="The identity broker's own role",
    )["Role"]
    server_role_arn = server_role["Arn"]
    account_id = server_role_arn.split(":")[4]
    user_role_arn = iam.create_role(
        RoleName=USER_ROLE_NAME,
        AssumeRolePolicyDocument=json.dumps(
            _user_role_trust_policy(server_role_arn, identity_pool_id)
        ),
        Description="Chime messaging as exactly one app instance user",
        MaxSessionDuration=43200,
    )["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=USER_ROLE_NAME,
        PolicyName="ChimeMessagingAsTaggedUser",
        PolicyDocument=json.dumps(_user_role_permissions(APP_INSTANCE_ARN)),
    )
    iam.put_role_policy(
        RoleName=SERVER_ROLE_NAME,
        PolicyName="VendUserCredentials",
        PolicyDocument=json.dumps(
            _server_role_permissions(
                user_role_arn,
                f"arn:aws:cognito-identity:{region}:{account_id}:identitypool/{identity_pool_id}",
                APP_INSTANCE_ARN,
            )
        ),
    )
    return AwsResources(
        endpoint_url=endpoint_url,
        region=region,
        account_id=account_id,
        identity_pool_id=identity_pool_id,
        developer_provider_name=DEVELOPER_PROVIDER_NAME,
        user_role_arn=user_role_arn,
        server_role_arn=server_role_arn,
    )
