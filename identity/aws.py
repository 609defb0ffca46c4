"""AWS clients, built once per process and shared by every request (boto3 clients are
thread-safe). Endpoints, credentials and region overrides come from the SDK's own
configuration (default chain, ``AWS_ENDPOINT_URL``); the config's region wins.

The retry policy of every call: botocore's ``standard`` mode (throttling, 5xx answers and
broken connections retried with jittered backoff, shared retry quota), at most
``MAX_ATTEMPTS`` attempts, each bounded by ``aws.timeouts.connect``/``read``, and a retry
started only while a whole attempt (connect and read timeouts) still fits in
``aws.timeouts.total``. Every call is
timed and counted (``identity.telemetry``); a failed one is logged with its operation and
AWS error code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast, get_args

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, ConnectionError, ReadTimeoutError
from botocore.utils import parse_timestamp

from identity import telemetry
from identity.config.document import BrokerConfig
from identity.config.models import Timeouts
from identity.vending.aws_errors import DeadlineExceeded, counted_code, is_throttling

if TYPE_CHECKING:
    from types_boto3_chime_sdk_identity.client import ChimeSDKIdentityClient
    from types_boto3_chime_sdk_messaging.client import ChimeSDKMessagingClient
    from types_boto3_cognito_identity.client import CognitoIdentityClient
    from types_boto3_iam.client import IAMClient
    from types_boto3_sts.client import STSClient

Service = Literal["cognito-identity", "sts", "chime-sdk-identity", "chime-sdk-messaging", "iam"]
SERVICES: tuple[Service, ...] = get_args(Service)

_ClientT = TypeVar("_ClientT", bound=BaseClient)

log = logging.getLogger("chime_broker.aws")

MAX_ATTEMPTS: Final = 3
_STARTED: Final = "chime_broker_started"


def _no_answer_label(error: BaseException) -> str:
    if isinstance(error, ReadTimeoutError | DeadlineExceeded):
        return telemetry.NO_ANSWER_TIMEOUT
    if isinstance(error, ConnectionError | ConnectionClosedError):
        return telemetry.NO_ANSWER_CONNECTION
    return "other"


class CallPolicy:
    """The botocore event handlers that enforce the deadline and observe every call of the
    clients they are installed on."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts

    def install(self, client: BaseClient) -> None:
        events = client.meta.events
        # First, so a Stubber's before-call (which answers instead of AWS) still finds it.
        events.register_first("before-call", self._started, unique_id="chime-broker-started")
        events.register("before-send", self._within_deadline, unique_id="chime-broker-deadline")
        events.register("after-call", self._answered, unique_id="chime-broker-answered")
        events.register("after-call-error", self._failed, unique_id="chime-broker-failed")

    def _started(self, context: dict[str, Any], **_: Any) -> None:
        context[_STARTED] = time.monotonic()

    def _within_deadline(self, request: Any, event_name: str = "", **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        attempt = context.get("retries", {}).get("attempt", 1)
        started = context.get(_STARTED)
        if attempt <= 1 or started is None:
            return
        elapsed = time.monotonic() - started
        if elapsed + self.timeouts.connect + self.timeouts.read > self.timeouts.total:
            raise DeadlineExceeded(
                operation=_operation_name(event_name),
                attempt=attempt,
                total=self.timeouts.total,
            )

    def _elapsed(self, context: dict[str, Any]) -> float:
        started = context.get(_STARTED)
        return time.monotonic() - started if started is not None else 0.0

    def _answered(
        self,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        status = getattr(http_response, "status_code", 200)
        code = None
        if status >= 300:
            code = str(parsed.get("Error", {}).get("Code") or f"HTTP {status}")
            # AWS failing or throttling is the operator's to see; a refused token, a user
            # that exists already or an identity that is gone are answers the broker handles.
            fault = status >= 500 or is_throttling(code)
            level = logging.WARNING if fault else logging.INFO
            log.log(
                level,
                "AWS call failed: %s %s",
                model.name,
                code,
                extra={"fields": self._fields(model.name, context, code, status=status)},
            )
        telemetry.current().upstream_call(
            "aws", model.name, self._elapsed(context), counted_code(code) if code else None
        )

    def _failed(
        self, exception: BaseException, context: dict[str, Any], event_name: str = "", **_: Any
    ) -> None:
        operation = _operation_name(event_name)
        label = _no_answer_label(exception)
        log.warning(
            "AWS call got no answer: %s %s",
            operation,
            type(exception).__name__,
            extra={"fields": self._fields(operation, context, type(exception).__name__)},
        )
        telemetry.current().upstream_call("aws", operation, self._elapsed(context), label)

    def _fields(
        self, operation: str, context: dict[str, Any], code: str, *, status: int | None = None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "operation": operation,
            "error_code": code,
            "attempts": context.get("retries", {}).get("attempt", 1),
            "seconds": round(self._elapsed(context), 3),
        }
        if status is not None:
            fields["http_status"] = status
        return fields


def parse_aws_timestamp(value: Any) -> datetime:
    """The timestamp parser of the broker's clients. AWS writes a timestamp as epoch
    seconds (JSON protocols: Cognito's ``Expiration``) or as ISO 8601 with an offset (query
    protocols: STS's); those become aware UTC datetimes here, by the standard library.
    Anything else goes to botocore's own parser, which reads every timestamp through
    dateutil: 10 µs for epoch seconds and 33 µs for ISO 8601 on the benchmark's machine,
    against under one. (The AWS CLI replaces the parser the same way.)"""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    found: datetime = parse_timestamp(value)
    return found


def _operation_name(event_name: str) -> str:
    """``AssumeRole`` of ``after-call-error.sts.AssumeRole``."""
    return event_name.rsplit(".", 1)[-1] or "unknown"


class AwsClients:
    """Lazily built, cached clients with bounded timeouts, standard retries and a
    connection pool sized to the worker's concurrency."""

    def __init__(self, config: BrokerConfig, *, max_pool_connections: int = 64) -> None:
        self.region = config.aws.region
        self._botocore_config = Config(
            region_name=config.aws.region,
            connect_timeout=config.aws.timeouts.connect,
            read_timeout=config.aws.timeouts.read,
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            max_pool_connections=max_pool_connections,
            user_agent_extra="chime-identity-broker",
        )
        self.policy = CallPolicy(config.aws.timeouts)
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=parse_aws_timestamp
        )
        self._session = boto3.session.Session(botocore_session=core, region_name=config.aws.region)
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
                    self.policy.install(found)
        # Only ``build`` and ``install`` put a client under ``service``: one of that service.
        return cast("_ClientT", found)

    def install(self, service: Service, client: BaseClient) -> None:
        """Use ``client``, a client of ``service``, from now on (a Stubber-wrapped one in
        tests)."""
        self.policy.install(client)
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
