"""AWS clients, built once per process and shared by every request (boto3 clients are
thread-safe). Endpoints, credentials and region overrides come from the SDK's own
configuration (default chain, ``AWS_ENDPOINT_URL``); the config's region wins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar, cast, get_args

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from identity.config.document import BrokerConfig

if TYPE_CHECKING:
    from types_boto3_chime_sdk_identity.client import ChimeSDKIdentityClient
    from types_boto3_chime_sdk_messaging.client import ChimeSDKMessagingClient
    from types_boto3_cognito_identity.client import CognitoIdentityClient
    from types_boto3_iam.client import IAMClient
    from types_boto3_sts.client import STSClient

Service = Literal["cognito-identity", "sts", "chime-sdk-identity", "chime-sdk-messaging", "iam"]
SERVICES: tuple[Service, ...] = get_args(Service)

_ClientT = TypeVar("_ClientT", bound=BaseClient)


class AwsClients:
    """Lazily built, cached clients with bounded timeouts, standard retries and a
    connection pool sized to the worker's concurrency."""

    def __init__(self, config: BrokerConfig, *, max_pool_connections: int = 64) -> None:
        self.region = config.aws.region
        self._botocore_config = Config(
            region_name=config.aws.region,
            connect_timeout=config.aws.timeouts.connect,
            read_timeout=config.aws.timeouts.read,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=max_pool_connections,
            user_agent_extra="chime-identity-broker",
        )
        self._session = boto3.session.Session(region_name=config.aws.region)
        self._clients: dict[Service, BaseClient] = {}
        self._lock = threading.Lock()

    def _client(self, service: Service, build: Callable[[], _ClientT]) -> _ClientT:
        """The one client for ``service`` in this process, built on first use."""
        found = self._clients.get(service)
        if found is None:
            with self._lock:
                found = self._clients.get(service)
                if found is None:
                    found = self._clients[service] = build()
        # Only ``build`` and ``install`` put a client under ``service``: one of that service.
        return cast("_ClientT", found)

    def install(self, service: Service, client: BaseClient) -> None:
        """Use ``client``, a client of ``service``, from now on (a Stubber-wrapped one in
        tests)."""
        with self._lock:
            self._clients[service] = client

    @property
    def cognito_identity(self) -> CognitoIdentityClient:
        return self._client(
            "cognito-identity",
            lambda: self._session.client("cognito-identity", config=self._botocore_config),
        )

    @property
    def sts(self) -> STSClient:
        return self._client(
            "sts", lambda: self._session.client("sts", config=self._botocore_config)
        )

    @property
    def iam(self) -> IAMClient:
        return self._client(
            "iam", lambda: self._session.client("iam", config=self._botocore_config)
        )

    @property
    def chime_identity(self) -> ChimeSDKIdentityClient:
        return self._client(
            "chime-sdk-identity",
            lambda: self._session.client("chime-sdk-identity", config=self._botocore_config),
        )

    @property
    def chime_messaging(self) -> ChimeSDKMessagingClient:
        return self._client(
            "chime-sdk-messaging",
            lambda: self._session.client("chime-sdk-messaging", config=self._botocore_config),
        )
