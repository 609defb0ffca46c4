"""AWS clients, built once per process and shared by every request (boto3 clients are
thread-safe). Endpoints, credentials and region overrides come from the SDK's own
configuration (default chain, ``AWS_ENDPOINT_URL``); the config's region wins."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.config import Config

from identity.config import BrokerConfig

SERVICES = ("cognito-identity", "sts", "chime-sdk-identity", "chime-sdk-messaging")


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
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str) -> Any:
        """The one client for ``service`` in this process."""
        found = self._clients.get(service)
        if found is not None:
            return found
        with self._lock:
            found = self._clients.get(service)
            if found is None:
                found = self._session.client(service, config=self._botocore_config)
                self._clients[service] = found
            return found

    def install(self, service: str, client: Any) -> None:
        """Use ``client`` for ``service`` (a Stubber-wrapped client in tests)."""
        with self._lock:
            self._clients[service] = client

    @property
    def cognito_identity(self) -> Any:
        return self.client("cognito-identity")

    @property
    def sts(self) -> Any:
        return self.client("sts")

    @property
    def chime_identity(self) -> Any:
        return self.client("chime-sdk-identity")

    @property
    def chime_messaging(self) -> Any:
        return self.client("chime-sdk-messaging")
