"""``chime-broker plan`` and ``apply`` against an identity pool that other apps share: the
broker's logins, principal-tag maps, developer provider name and authenticated role are
made to match the config, and everything else in the pool is sent back as it was.

AWS is the moto server behind ``tests.fixtures.pool_proxy`` (which answers the role and
tag-map operations moto lacks); the proxy's record shows exactly what the broker sent."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import main
from tests.fixtures.moto_server import AwsWorld
from tests.fixtures.pool_proxy import PoolProxy

SECRET = "s" * 40
DEVELOPER_PROVIDER = "login.chime-test.example"
GOOGLE_IDS = "1234-web.apps.googleusercontent.com,1234-ios.apps.googleusercontent.com"
USER_POOL_KEY = "cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf123"
PARTNERS_ISSUER = "https://partners.example.com"

# What other apps have in the shared pool: the broker must keep all of it.
OTHER_LOGINS = {
    "graph.facebook.com": "999000111",
    "www.amazon.com": "amzn1.application.other-app",
}
OTHER_USER_POOL = {
    "ProviderName": "cognito-idp.us-east-1.amazonaws.com/us-east-1_Other0001",
    "ClientId": "otherclient",
    "ServerSideTokenCheck": True,
}
OTHER_OIDC_ARN = "arn:aws:iam::123456789012:oidc-provider/other.example.com"
OTHER_SAML_ARN = "arn:aws:iam::123456789012:saml-provider/corp"
POOL_TAGS = {"team": "other-apps"}
OTHER_GOOGLE_ID = "someone-else.apps.googleusercontent.com"

MUTATIONS = {
    "UpdateIdentityPool",
    "SetPrincipalTagAttributeMap",
    "SetIdentityPoolRoles",
    "CreateOpenIDConnectProvider",
    "AddClientIDToOpenIDConnectProvider",
}


@dataclass(frozen=True)
class SharedPool:
    pool_id: str
    config_path: Path
    guest_role_arn: str
    cognito: Any  # a boto3 cognito-identity client through the proxy (another admin)
    iam: Any


def _config(aws: AwsWorld, pool_id: str) -> dict[str, Any]:
    return {
        "mode": "production",
        "aws": {
            "region": aws.region,
            "cognito": {
                "identity_pool_id": pool_id,
                "developer_provider_name": DEVELOPER_PROVIDER,
                "role_arn": aws.user_role_arn,
            },
        },
        "chime": {"app_instance_arn": aws.app_instance_arn, "user_tag": aws.user_tag},
        "service": {"public_url": "https://auth.example.chat", "secret_key": SECRET},
        "store": "memory://",
        "providers": [
            {
                "name": "google",
                "kind": "google",
                "client_ids": GOOGLE_IDS.split(","),
                "exchange": "cognito",
                "allow_shared_user_ids": True,
            },
            {
                "name": "workforce",
                "kind": "cognito_user_pool",
                "user_pool_id": "us-east-1_AbCdEf123",
                "client_ids": ["poolclient"],
                "exchange": "cognito",
                "allow_shared_user_ids": True,
                "map": {"user_id": "{sub}", "tags": {"department": "{dept}"}},
            },
            {
                "name": "partners",
                "kind": "oidc",
                "issuer": PARTNERS_ISSUER,
                "client_id": "partner-app",
                "audiences": ["partner-app", "partner-mobile"],
                "exchange": "cognito",
                "allow_shared_user_ids": True,
            },
            {
                "name": "okta",
                "kind": "oidc",
                "issuer": "https://example.okta.com/oauth2/default",
                "client_id": "0oa1example",
                "exchange": "cognito_developer",
                "map": {"user_id": "okta-{sub}"},
            },
        ],
    }


def _shared_pool(
    aws: AwsWorld, proxy: PoolProxy, tmp_path: Path, **create: Any
) -> Iterator[SharedPool]:
    cognito = aws.client("cognito-identity")
    through_proxy = _client(aws, proxy, "cognito-identity")
    iam = aws.client("iam")
    settings: dict[str, Any] = {
        "IdentityPoolName": "shared_by_several_apps",
        "AllowUnauthenticatedIdentities": True,
        "SupportedLoginProviders": OTHER_LOGINS,
        "CognitoIdentityProviders": [OTHER_USER_POOL],
        "OpenIdConnectProviderARNs": [OTHER_OIDC_ARN],
        "SamlProviderARNs": [OTHER_SAML_ARN],
        "IdentityPoolTags": POOL_TAGS,
    }
    pool_id = cognito.create_identity_pool(**{**settings, **create})["IdentityPoolId"]
    guest_role_arn = aws.server_role_arn
    # Another app's unauthenticated role, set before the broker ever looks.
    through_proxy.set_identity_pool_roles(
        IdentityPoolId=pool_id, Roles={"unauthenticated": guest_role_arn}
    )
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(_config(aws, pool_id), sort_keys=False))
    proxy.reset()
    try:
        yield SharedPool(pool_id, path, guest_role_arn, through_proxy, iam)
    finally:
        cognito.delete_identity_pool(IdentityPoolId=pool_id)
        for entry in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            if entry["Arn"].endswith(":oidc-provider/partners.example.com"):
                iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=entry["Arn"])


def _client(aws: AwsWorld, proxy: PoolProxy, service: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=proxy.endpoint_url,
        region_name=aws.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def shared_pool(aws: AwsWorld, pool_aws: PoolProxy, tmp_path: Path) -> Iterator[SharedPool]:
    yield from _shared_pool(aws, pool_aws, tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``chime-broker ARGV``: exit status, stdout, stderr."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def mutations(proxy: PoolProxy) -> list[str | None]:
    return [op for op in proxy.operations() if op in MUTATIONS]


def test_plan_lists_what_a_fresh_pool_lacks_apply_makes_it_and_keeps_the_other_apps(
    shared_pool: SharedPool,
    pool_aws: PoolProxy,
    aws: AwsWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(shared_pool.config_path)
    code, out, err = run(capsys, "plan", "--config", config)
    assert (code, err) == (2, "")
    tags = f"{aws.user_tag} <- sub"
    for line in [
        f"identity pool {shared_pool.pool_id} (shared_by_several_apps)",
        f"  + developer provider name {DEVELOPER_PROVIDER}",
        f"  + login accounts.google.com = {GOOGLE_IDS} (provider google)",
        f"  + user pool login {USER_POOL_KEY} client poolclient (provider workforce)",
        "  + OIDC login partners.example.com: create the IAM OIDC provider for "
        f"{PARTNERS_ISSUER} (audiences partner-app, partner-mobile) and add it "
        "(provider partners)",
        f"  + principal tags for accounts.google.com: {tags}, UseDefaults false (provider google)",
        f"  + principal tags for {USER_POOL_KEY}: department <- dept, {tags}, UseDefaults "
        "false (provider workforce)",
        f"  + principal tags for partners.example.com: {tags}, UseDefaults false "
        "(provider partners)",
        f"  + authenticated role (none) -> {aws.user_role_arn}",
        "not managed (left as they are):",
        "  login graph.facebook.com = 999000111",
        "  login www.amazon.com = amzn1.application.other-app",
        f"  user pool login {OTHER_USER_POOL['ProviderName']} client otherclient",
        f"  OIDC login {OTHER_OIDC_ARN}",
        f"  SAML login {OTHER_SAML_ARN}",
        f"  unauthenticated role {shared_pool.guest_role_arn}",
        "8 difference(s)",
    ]:
        assert line in out.splitlines(), line
    assert mutations(pool_aws) == []

    pool_aws.reset()
    code, out, err = run(capsys, "apply", "--config", config, "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"applied 8 change(s) to {shared_pool.pool_id}"

    [created] = [r for r in pool_aws.requests() if r.operation == "CreateOpenIDConnectProvider"]
    assert created.query_params["Url"] == [PARTNERS_ISSUER]
    assert created.query_params["ClientIDList.member.1"] == ["partner-app"]
    assert created.query_params["ClientIDList.member.2"] == ["partner-mobile"]
    partners_arn = f"arn:aws:iam::{aws.account_id}:oidc-provider/partners.example.com"

    # UpdateIdentityPool replaces the whole record: the body must carry every other app's
    # login and setting, not only what moto would merge back in.
    [update] = pool_aws.calls("UpdateIdentityPool")
    assert update == {
        "IdentityPoolId": shared_pool.pool_id,
        "IdentityPoolName": "shared_by_several_apps",
        "AllowUnauthenticatedIdentities": True,
        "SupportedLoginProviders": {**OTHER_LOGINS, "accounts.google.com": GOOGLE_IDS},
        "DeveloperProviderName": DEVELOPER_PROVIDER,
        "OpenIdConnectProviderARNs": [OTHER_OIDC_ARN, partners_arn],
        "CognitoIdentityProviders": [
            OTHER_USER_POOL,
            {
                "ProviderName": USER_POOL_KEY,
                "ClientId": "poolclient",
                "ServerSideTokenCheck": False,
            },
        ],
        "SamlProviderARNs": [OTHER_SAML_ARN],
        "IdentityPoolTags": POOL_TAGS,
    }
    assert sorted(
        (c["IdentityProviderName"], c["UseDefaults"], tuple(sorted(c["PrincipalTags"].items())))
        for c in pool_aws.calls("SetPrincipalTagAttributeMap")
    ) == [
        ("accounts.google.com", False, ((aws.user_tag, "sub"),)),
        (USER_POOL_KEY, False, (("department", "dept"), (aws.user_tag, "sub"))),
        ("partners.example.com", False, ((aws.user_tag, "sub"),)),
    ]
    assert pool_aws.calls("SetIdentityPoolRoles") == [
        {
            "IdentityPoolId": shared_pool.pool_id,
            "Roles": {
                "unauthenticated": shared_pool.guest_role_arn,
                "authenticated": aws.user_role_arn,
            },
        }
    ]
    described = shared_pool.cognito.describe_identity_pool(IdentityPoolId=shared_pool.pool_id)
    assert described["SupportedLoginProviders"] == update["SupportedLoginProviders"]
    assert described["DeveloperProviderName"] == DEVELOPER_PROVIDER

    pool_aws.reset()
    code, out, err = run(capsys, "plan", "--config", config)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "no differences"
    assert f"  OIDC login {partners_arn}" not in out  # the broker's own, not "not managed"

    code, out, err = run(capsys, "apply", "--config", config, "--yes")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "no differences"
    assert mutations(pool_aws) == []


def test_drift_behind_the_brokers_back_is_named_by_plan_and_repaired_by_apply(
    shared_pool: SharedPool,
    pool_aws: PoolProxy,
    aws: AwsWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(shared_pool.config_path)
    assert run(capsys, "apply", "--config", config, "--yes")[0] == 0
    pool = shared_pool.cognito.describe_identity_pool(IdentityPoolId=shared_pool.pool_id)
    pool.pop("ResponseMetadata")
    pool["SupportedLoginProviders"]["accounts.google.com"] = OTHER_GOOGLE_ID
    shared_pool.cognito.update_identity_pool(**pool)
    shared_pool.cognito.set_principal_tag_attribute_map(
        IdentityPoolId=shared_pool.pool_id,
        IdentityProviderName=USER_POOL_KEY,
        UseDefaults=True,
        PrincipalTags={aws.user_tag: "email"},
    )
    pool_aws.reset()

    code, out, err = run(capsys, "plan", "--config", config)
    assert (code, err) == (2, "")
    changes = [line for line in out.splitlines() if line.startswith("  ~ ")]
    assert changes == [
        f"  ~ login accounts.google.com = {OTHER_GOOGLE_ID} -> {GOOGLE_IDS} (provider google)",
        f"  ~ principal tags for {USER_POOL_KEY}: {aws.user_tag} <- email, UseDefaults true "
        f"-> department <- dept, {aws.user_tag} <- sub, UseDefaults false (provider workforce)",
    ]
    assert out.splitlines()[-1] == "2 difference(s)"
    assert mutations(pool_aws) == []

    code, out, err = run(capsys, "apply", "--config", config, "--yes")
    assert (code, err) == (0, "")
    assert mutations(pool_aws) == ["UpdateIdentityPool", "SetPrincipalTagAttributeMap"]
    [update] = pool_aws.calls("UpdateIdentityPool")
    assert update["SupportedLoginProviders"] == {**OTHER_LOGINS, "accounts.google.com": GOOGLE_IDS}
    assert OTHER_USER_POOL in update["CognitoIdentityProviders"]
    assert update["SamlProviderARNs"] == [OTHER_SAML_ARN]
    assert run(capsys, "plan", "--config", config)[0] == 0


def test_a_different_developer_provider_name_is_an_error_that_changes_nothing(
    aws: AwsWorld, pool_aws: PoolProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pools = _shared_pool(aws, pool_aws, tmp_path, DeveloperProviderName="login.someone-else")
    shared = next(pools)
    try:
        config = str(shared.config_path)
        for argv in (["plan", "--config", config], ["apply", "--config", config, "--yes"]):
            code, out, err = run(capsys, *argv)
            assert (code, out) == (1, "")
            assert err == (
                f"{config}: the identity pool's DeveloperProviderName is "
                f"'login.someone-else' but aws.cognito.developer_provider_name is "
                f"'{DEVELOPER_PROVIDER}': AWS never lets a pool's developer provider name "
                "change once it is set; set aws.cognito.developer_provider_name to "
                "'login.someone-else' or use another identity pool\n"
            )
        assert mutations(pool_aws) == []
    finally:
        pools.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_apply_asks_on_a_terminal_and_refuses_without_one_unless_yes(
    shared_pool: SharedPool,
    pool_aws: PoolProxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(shared_pool.config_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, err = run(capsys, "apply", "--config", config)
    assert code == 1
    assert "run again with --yes" in err
    assert mutations(pool_aws) == []

    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    code, out, err = run(capsys, "apply", "--config", config)
    assert code == 1
    assert f"apply 8 change(s) to {shared_pool.pool_id}? [y/N]" in out
    assert "apply: nothing changed" in err
    assert mutations(pool_aws) == []

    monkeypatch.setattr("sys.stdin", _Terminal("yes\n"))
    code, out, err = run(capsys, "apply", "--config", config)
    assert (code, err) == (0, "")
    assert "UpdateIdentityPool" in mutations(pool_aws)
    assert run(capsys, "plan", "--config", config)[0] == 0


def test_the_proxy_refuses_what_botocore_would_refuse_and_records_it(
    pool_aws: PoolProxy,
) -> None:
    import requests

    response = requests.post(
        pool_aws.endpoint_url,
        headers={
            "X-Amz-Target": "AWSCognitoIdentityService.SetIdentityPoolRoles",
            "Content-Type": "application/x-amz-json-1.1",
        },
        data=b'{"IdentityPoolId": "us-east-1:abc", "Roles": {"authenticated": 7}}',
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["__type"] == "InvalidParameterException"
    assert "Roles.authenticated" in response.json()["message"]
    assert pool_aws.calls("SetIdentityPoolRoles") == [
        {"IdentityPoolId": "us-east-1:abc", "Roles": {"authenticated": 7}}
    ]


def test_plan_adds_an_existing_iam_oidc_provider_and_names_its_missing_audiences(
    shared_pool: SharedPool, pool_aws: PoolProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the plan: moto 5.2 does not implement AddClientIDToOpenIDConnectProvider.
    arn = shared_pool.iam.create_open_id_connect_provider(
        Url=PARTNERS_ISSUER, ClientIDList=["partner-app", "another-app"]
    )["OpenIDConnectProviderArn"]
    code, out, err = run(capsys, "plan", "--config", str(shared_pool.config_path))
    assert (code, err) == (2, "")
    lines = out.splitlines()
    assert f"  ~ IAM OIDC provider {arn}: add audiences partner-mobile (provider partners)" in lines
    assert f"  + OIDC login {arn} (provider partners)" in lines
    assert not any("create the IAM OIDC provider" in line for line in lines)
    assert mutations(pool_aws) == []


def test_social_logins_carry_the_ids_aws_expects_and_one_login_has_one_owner(
    aws: AwsWorld, pool_aws: PoolProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pools = _shared_pool(aws, pool_aws, tmp_path, SupportedLoginProviders={})
    shared = next(pools)
    try:
        document = _config(aws, shared.pool_id)
        shared_ids = {"exchange": "cognito", "allow_shared_user_ids": True}
        document["providers"] = [
            {
                "name": "fb",
                "kind": "facebook",
                "app_id": "1234567890",
                "app_secret": "facebook-app-secret",
                **shared_ids,
            },
            {"name": "apple", "kind": "apple", "client_ids": ["com.example.chat"], **shared_ids},
            {
                "name": "amazon",
                "kind": "amazon",
                "client_ids": ["amzn1.application-oa2-client.example"],
                **shared_ids,
            },
        ]
        shared.config_path.write_text(yaml.safe_dump(document))
        code, out, _ = run(capsys, "plan", "--config", str(shared.config_path))
        assert code == 2
        lines = out.splitlines()
        assert "  + login graph.facebook.com = 1234567890 (provider fb)" in lines
        assert "  + login appleid.apple.com = com.example.chat (provider apple)" in lines
        assert (
            "  + login www.amazon.com = amzn1.application-oa2-client.example (provider amazon)"
            in lines
        )

        document["providers"].append(
            {"name": "apple-tv", "kind": "apple", "client_ids": ["com.example.tv"], **shared_ids}
        )
        shared.config_path.write_text(yaml.safe_dump(document))
        code, out, err = run(capsys, "plan", "--config", str(shared.config_path))
        assert (code, out) == (1, "")
        assert (
            "providers 'apple' and 'apple-tv' both sign in with the identity pool's login "
            "appleid.apple.com" in err
        )
        assert mutations(pool_aws) == []
    finally:
        pools.close()


def test_plan_without_a_reachable_aws_is_an_error_not_a_traceback(
    shared_pool: SharedPool,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    config = str(shared_pool.config_path)
    code, out, err = run(capsys, "plan", "--config", config)
    assert (code, out) == (1, "")
    assert err.startswith(f"{config}: AWS: Could not connect to the endpoint URL")
    assert "Traceback" not in err
