"""The API contract against a live broker: schemathesis sends a broker on a loopback port
what its examples and coverage phases make of the OpenAPI document (the boundaries of every
constraint, and requests that break them) and checks each answer with its default checks:
no 500s, only documented statuses, content types and headers, bodies that match their
schemas, refusals of what the document forbids and acceptance of what it allows. The
document is the packaged one, which the served one equals but for its version and server.

The broker vends through the moto server and knows the local OIDC provider (``okta``) and
an open guest provider (``lobby``), the provider names of the document's examples."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from identity.providers.guest import OPEN_GUESTS_PER_MINUTE, RATE_WINDOW
from service.demo.dev_idp import DevIdentityProvider
from service.openapi import packaged_document
from tests.fakes import FakeClock
from tests.fixtures.apps import MakeConfig
from tests.fixtures.live_server import LiveServer

INVITE_SECRET = "lobby-invite-secret-0123456789abcdefghijkl"

# schemathesis's own list of answers that refuse a request
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]

# ... and of answers to a request the document allows
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

# Examples and coverage only: the coverage phase already derives every boundary and every
# violation of the document's constraints, and fuzzing would cost minutes.
CONTRACT_RUN = {
    "seed": 14,
    "cache": {"enabled": False},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": False},
        "stateful": {"enabled": False},
    },
    "request-timeout": 10.0,
    # A body over service.max_body is refused with 413 before its fields are read.
    "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSED, "413"]}},
    "operations": [
        {
            # A browser login that cannot begin goes back to its return_to with ?error=.
            "include-operation-id": "beginLogin",
            "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSED, "302"]}},
        },
        {
            # An unknown or spent one-time code is a 400, as OAuth's invalid_grant.
            "include-operation-id": "exchangeToken",
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
        },
    ],
}


@pytest.fixture
def contract_broker(
    live_broker: Callable[..., LiveServer],
    make_config: MakeConfig,
    aws: Any,
    oidc_provider: DevIdentityProvider,
    clock: FakeClock,
) -> LiveServer:
    oidc_provider.register_client("spa")
    return live_broker(
        lambda url: make_config(
            service__public_url=url,
            providers=[
                {
                    "name": "okta",
                    "kind": "oidc",
                    "issuer": oidc_provider.issuer,
                    "client_id": "spa",
                    "exchange": "sts",
                    "map": {"user_id": "okta-{sub}"},
                },
                {
                    "name": "lobby",
                    "kind": "guest",
                    "exchange": "sts",
                    "allow_open_guests": True,
                    "invite": {
                        "issuer": "https://app.example.chat",
                        "audience": "lobby",
                        "shared_secret": INVITE_SECRET,
                    },
                },
            ],
        ),
        clock=clock,
    )


contract = schemathesis.openapi.from_dict(
    packaged_document(), config=SchemathesisConfig.from_dict(CONTRACT_RUN)
)


# One broker answers all of an operation's cases, as one deployment answers all clients.
@contract.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
def test_the_broker_answers_as_its_document_says(
    case: Case[Any], contract_broker: LiveServer
) -> None:
    case.call_and_validate(base_url=contract_broker.url)


def test_a_rate_limited_guest_is_told_when_to_come_back(
    contract_broker: LiveServer, aws: Any, clock: FakeClock
) -> None:
    operation = contract["/v1/guest"]["POST"]

    def guest() -> Any:
        case = operation.Case(body={"provider": "lobby"}, media_type="application/json")
        return case.call_and_validate(base_url=contract_broker.url)

    admitted = [guest() for _ in range(OPEN_GUESTS_PER_MINUTE)]
    refused = guest()
    assert [a.status_code for a in admitted] == [200] * OPEN_GUESTS_PER_MINUTE
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert "credentials" not in refused.json()
    [retry_after] = refused.headers["retry-after"]
    wait = int(retry_after)
    assert wait == math.ceil(RATE_WINDOW - clock.now % RATE_WINDOW)
    assert len(aws.recorder.calls("AssumeRole")) == OPEN_GUESTS_PER_MINUTE

    clock.advance(wait)
    assert guest().status_code == 200
    assert len(aws.recorder.calls("AssumeRole")) == OPEN_GUESTS_PER_MINUTE + 1


def test_the_served_document_names_this_install_and_this_broker(
    contract_broker: LiveServer,
) -> None:
    served = requests.get(f"{contract_broker.url}/openapi.json", timeout=10).json()
    assert served["info"]["version"] == version("chime-identity-broker")
    assert served["servers"] == [
        {"url": contract_broker.url, "description": "This broker (service.public_url)."}
    ]
    packaged = packaged_document()
    assert "servers" not in packaged
    assert packaged["info"]["version"] != served["info"]["version"]
    assert served["paths"] == packaged["paths"]
    assert served["components"] == packaged["components"]


def test_every_429_and_503_declares_retry_after() -> None:
    document = packaged_document()
    named = document["components"]["responses"]
    declared = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status in ("429", "503"):
                response = operation["responses"].get(status)
                if response is None:
                    continue
                if "$ref" in response:
                    response = named[response["$ref"].rsplit("/", 1)[1]]
                headers = response.get("headers", {})
                assert "Retry-After" in headers, f"{method.upper()} {path} {status}"
                declared.append((path, method, status))
    assert declared
