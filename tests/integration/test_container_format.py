"""``GET /v1/credentials/container`` in the current AWS container-credentials format: the
success body carries ``AccountId`` (the account of the role vended into) and an error body
carries ``Code`` and ``Message`` besides the problem fields, which the AWS SDK for
JavaScript's ``fromHttp`` reads. botocore's container provider picks the account up."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
import requests

from tests.fakes import FakeClock
from tests.fixtures.apps import MakeApp, MakeConfig
from tests.integration.test_sessions import CLIENT_ID, corp, start

OTHER_ACCOUNT_ROLE = "arn:aws:iam::210987654321:role/ChimeMessagingOtherUserRole"


def account_of(arn: str) -> str:
    return arn.split(":")[4]


def test_a_success_body_carries_the_account_of_the_vended_role(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    response = client.get("/v1/credentials/container", headers={"Authorization": session})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["AccountId"] == account_of(aws.user_role_arn)
    assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "AccountId", "Expiration"}
    assert [c["RoleArn"] for c in aws.recorder.calls("AssumeRole")] == [aws.user_role_arn]


def test_a_providers_own_role_names_its_own_account(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    overrides = corp(oidc_provider, "sts")
    overrides["providers"][0]["role_arn"] = OTHER_ACCOUNT_ROLE
    client = make_app(**overrides).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    response = client.get("/v1/credentials/container", headers={"Authorization": session})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["AccountId"] == "210987654321"
    assert [c["RoleArn"] for c in aws.recorder.calls("AssumeRole")] == [OTHER_ACCOUNT_ROLE]


def test_a_cognito_session_names_the_app_instances_account(
    aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "cognito_developer")).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    response = client.get("/v1/credentials/container", headers={"Authorization": session})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["AccountId"] == account_of(aws.app_instance_arn)


@pytest.mark.parametrize("authorization", [None, "cbs_not-a-session"])
def test_an_error_body_carries_code_and_message(
    authorization: str | None, aws: Any, oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get("/v1/credentials/container", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["Code"] == body["code"] == "unauthenticated"
    assert body["Message"] == body["detail"] and body["Message"]
    assert aws.recorder.requests() == []


def test_an_ended_session_answers_code_and_message(
    aws: Any, oidc_provider: Any, make_app: MakeApp, clock: FakeClock
) -> None:
    client = make_app(**corp(oidc_provider, "sts"), clock=clock).test_client()
    session = start(client, oidc_provider)["broker_session"]["token"]
    clock.advance(3601)
    body = client.get("/v1/credentials/container", headers={"Authorization": session}).get_json()
    assert body["Code"] == body["code"]
    assert body["Message"] == body["detail"]


def test_other_routes_keep_the_plain_problem_document(
    oidc_provider: Any, make_app: MakeApp
) -> None:
    client = make_app(**corp(oidc_provider, "sts")).test_client()
    body = client.post("/v1/credentials").get_json()
    assert body["code"] == "unauthenticated"
    assert "Code" not in body and "Message" not in body


def test_botocore_reads_the_account_id(
    aws: Any,
    oidc_provider: Any,
    live_broker: Any,
    monkeypatch: pytest.MonkeyPatch,
    make_config: MakeConfig,
) -> None:
    server = live_broker(make_config(**corp(oidc_provider, "sts")))
    oidc_provider.register_client(CLIENT_ID)
    id_token = oidc_provider.mint_id_token({"sub": "alice"}, audience=CLIENT_ID)
    body = requests.post(
        f"{server.url}/v1/token", json={"provider": "corp", "id_token": id_token}, timeout=10
    ).json()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{server.url}/v1/credentials/container"
    )
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", body["broker_session"]["token"])
    credentials = boto3.session.Session(region_name=aws.region).get_credentials()
    assert credentials is not None and credentials.method == "container-role"
    assert credentials.get_frozen_credentials().account_id == account_of(aws.user_role_arn)
