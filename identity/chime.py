"""The Chime SDK side of a login: app instance user provisioning and the messaging endpoint.

``AppInstanceUsers`` (``chime.provision_users``) makes sure a user exists in the app
instance before any credentials are vended for it: the first login calls
``CreateAppInstanceUser``, later ones find the user in the store and call nothing, and a
changed display name is pushed once with ``UpdateAppInstanceUser``.
``MessagingEndpoint`` (``chime.messaging_endpoint``) keeps the
``GetMessagingSessionEndpoint`` URL for an hour per process.

Both use the injected ``chime-sdk-identity`` / ``chime-sdk-messaging`` clients; every
botocore failure leaves as a ``BrokerError`` through ``identity.vending.aws_errors``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import TypeAdapter

from identity.aws import AwsClients
from identity.config.models import ChimeConfig
from identity.errors import BrokerError, UpstreamError
from identity.mapping import app_instance_user_arn
from identity.models import MappedUser
from identity.records import StoredRecord, read_record
from identity.store import Store
from identity.vending.aws_errors import error_code, translate

if TYPE_CHECKING:
    from types_boto3_chime_sdk_identity.type_defs import (
        AppInstanceUserTypeDef,
        CreateAppInstanceUserRequestTypeDef,
    )

__all__ = [
    "ENDPOINT_TTL",
    "PROVISIONED_TTL",
    "AppInstanceUsers",
    "MessagingEndpoint",
    "ProvisionedUser",
    "client_request_token",
    "provisioning_key",
]

log = logging.getLogger("chime_broker.chime")

IDENTITY_SERVICE: Final = "chime-sdk-identity"
MESSAGING_SERVICE: Final = "chime-sdk-messaging"

PROVISIONED_TTL: Final = 24 * 3600
"""How long a provisioned user is trusted to exist without asking Chime again (s)."""
# An expiring (guest) user's entry ends this long before Chime may delete the user, so a
# later login of the same id creates it again instead of trusting a stale entry.
EXPIRY_MARGIN: Final = 3600
ENDPOINT_TTL: Final = 3600
"""How long one process reuses the messaging session endpoint URL (s)."""
# After a failed refresh a stale URL is served this long before AWS is asked again.
ENDPOINT_RETRY: Final = 60

_KEY_PREFIX: Final = "chime-user:"
_DAY: Final = 86400
_PERMISSION_CODES: Final = frozenset(
    {"ForbiddenException", "UnauthorizedClientException", "AccessDeniedException"}
)
PERMISSION_DETAIL: Final = (
    "the broker's role may not manage Amazon Chime SDK app instance users; "
    "see `chime-broker policies`"
)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def client_request_token(app_instance_arn: str, user_id: str) -> str:
    """CreateAppInstanceUser's idempotency token for ``user_id``: 64 hex characters, the
    same for every attempt to create the same user, so retries cannot create two."""
    return _digest(app_instance_arn, user_id)


def provisioning_key(app_instance_arn: str, user_id: str) -> str:
    """The store key that remembers ``user_id`` exists in the app instance."""
    return _KEY_PREFIX + _digest(app_instance_arn, user_id)


class ProvisionedUser(StoredRecord):
    """What the broker remembers of a user it made sure exists (under
    ``provisioning_key``): the SHA-256 of the name Chime holds."""

    v: Literal[1] = 1
    name_sha256: str


_PROVISIONED: Final = TypeAdapter(ProvisionedUser)


def _name_digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _failure(error: BotoCoreError | ClientError, service: str) -> BrokerError:
    if error_code(error) in _PERMISSION_CODES:
        operation = getattr(error, "operation_name", None) or "?"
        return UpstreamError(
            PERMISSION_DETAIL, log_detail=f"{service} {operation}: {error_code(error)}"
        )
    return translate(error, service=service)


class AppInstanceUsers:
    """Creates users in the app instance on their first login and keeps their names current.

    What exists is remembered in the store under ``provisioning_key`` with the SHA-256 of
    the name Chime holds, for ``PROVISIONED_TTL`` (an expiring user: until an hour before
    Chime may delete it).  Thread-safe; racing first logins are harmless because the
    idempotency token is the same and ``ConflictException`` counts as success.
    """

    def __init__(
        self,
        chime: ChimeConfig,
        clients: AwsClients,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app_instance_arn = chime.app_instance_arn
        self._clients = clients
        self._store = store
        self._clock = clock

    def ensure(self, user: MappedUser, *, expiration_days: int | None = None) -> None:
        """Return once ``user`` exists with ``user.display_name`` as its Chime name.

        ``expiration_days`` (guests) makes Chime delete the user that many days after it
        was created.  Raises a ``BrokerError`` (``upstream_error`` for any refusal) when
        Chime cannot create or update the user: no credentials may be vended then.
        """
        key = provisioning_key(self._app_instance_arn, user.user_id)
        name = user.display_name if user.display_name.strip() else user.user_id
        digest = _name_digest(name)
        known = read_record(_PROVISIONED, self._store.get(key))
        if known is not None and known.name_sha256 == digest:
            return
        arn = app_instance_user_arn(self._app_instance_arn, user.user_id)
        if known is None:
            ttl = self._create(user.user_id, arn, name, expiration_days)
        else:
            ttl = self._synchronise_name(arn, name)
        if ttl is not None:
            self._store.set(key, _PROVISIONED.dump_json(ProvisionedUser(name_sha256=digest)), ttl)

    def _create(
        self, user_id: str, arn: str, name: str, expiration_days: int | None
    ) -> float | None:
        params: CreateAppInstanceUserRequestTypeDef = {
            "AppInstanceArn": self._app_instance_arn,
            "AppInstanceUserId": user_id,
            "Name": name,
            "ClientRequestToken": client_request_token(self._app_instance_arn, user_id),
        }
        if expiration_days is not None:
            params["ExpirationSettings"] = {
                "ExpirationDays": expiration_days,
                "ExpirationCriterion": "CREATED_TIMESTAMP",
            }
        try:
            self._clients.chime_identity.create_app_instance_user(**params)
        except ClientError as error:
            if error_code(error) != "ConflictException":
                raise _failure(error, IDENTITY_SERVICE) from error
            # It exists already (another worker, or a store that forgot it): adopt it.
            log.info("app instance user exists", extra={"fields": {"user_id": user_id}})
            return self._synchronise_name(arn, name)
        except BotoCoreError as error:
            raise _failure(error, IDENTITY_SERVICE) from error
        log.info(
            "app instance user created",
            extra={"fields": {"user_id": user_id, "expiration_days": expiration_days}},
        )
        return self._entry_ttl(None if expiration_days is None else expiration_days * _DAY)

    def _synchronise_name(self, arn: str, name: str) -> float | None:
        """Push ``name`` unless Chime already has it; the cache TTL for the user."""
        client = self._clients.chime_identity
        try:
            found = client.describe_app_instance_user(AppInstanceUserArn=arn)["AppInstanceUser"]
            if found.get("Name") != name:
                # UpdateAppInstanceUser replaces Metadata too: keep what the app stored there.
                client.update_app_instance_user(
                    AppInstanceUserArn=arn, Name=name, Metadata=found.get("Metadata", "")
                )
                log.info("app instance user renamed", extra={"fields": {"arn": arn}})
        except (BotoCoreError, ClientError) as error:
            raise _failure(error, IDENTITY_SERVICE) from error
        return self._entry_ttl(self._seconds_left(found))

    def _seconds_left(self, found: AppInstanceUserTypeDef) -> float | None:
        settings = found.get("ExpirationSettings")
        created = found.get("CreatedTimestamp")
        if not settings or not isinstance(created, datetime):
            return None
        days = int(settings["ExpirationDays"])
        return created.timestamp() + days * _DAY - self._clock()

    @staticmethod
    def _entry_ttl(seconds_left: float | None) -> float | None:
        """How long to remember the user: ``None`` (do not) when it expires within the
        margin."""
        if seconds_left is None:
            return PROVISIONED_TTL
        ttl = min(PROVISIONED_TTL, seconds_left - EXPIRY_MARGIN)
        return ttl if ttl > 0 else None


class MessagingEndpoint:
    """The app's messaging session endpoint URL, fetched once per ``ENDPOINT_TTL`` per
    process; while a refresh fails, the last URL is served and AWS asked again a minute
    later.  Thread-safe: one fetch at a time."""

    def __init__(
        self,
        clients: AwsClients,
        *,
        ttl: float = ENDPOINT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[str, float] | None = None

    def url(self) -> str:
        """The URL; raises a ``BrokerError`` when AWS cannot give one and none is cached."""
        cached = self._cached
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        with self._lock:
            now = self._clock()
            cached = self._cached
            if cached is not None and now < cached[1]:
                return cached[0]
            try:
                url = self._fetch()
            except BrokerError as error:
                if cached is None:
                    raise
                log.warning(
                    "messaging endpoint refresh failed; serving the last one",
                    extra={"fields": {"reason": error.log_detail}},
                )
                self._cached = (cached[0], now + ENDPOINT_RETRY)
                return cached[0]
            self._cached = (url, now + self._ttl)
            return url

    def _fetch(self) -> str:
        try:
            answer = self._clients.chime_messaging.get_messaging_session_endpoint()
        except (BotoCoreError, ClientError) as error:
            raise _failure(error, MESSAGING_SERVICE) from error
        url = answer.get("Endpoint", {}).get("Url")
        if not isinstance(url, str) or not url:
            raise UpstreamError(
                "Amazon Chime SDK returned no messaging session endpoint",
                log_detail="GetMessagingSessionEndpoint: no Endpoint.Url",
            )
        return url
