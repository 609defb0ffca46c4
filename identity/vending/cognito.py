"""Credentials from an Amazon Cognito identity pool.

* ``cognito`` (enhanced flow): the provider's own token goes to Cognito, which verifies
  it and derives the principal tags from its claims through the pool's tag map.
* ``cognito_developer`` (developer-authenticated identities): the broker vouches for the
  user with the pool's developer provider name and sets the principal tags itself.

Identity ids are cached in the store (GetId is throttled at 25 req/s per account);
cache keys are hashes, so no subject or user id sits in the store's key space.
Cognito always issues credentials for one hour, whatever the session has left.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import TypeAdapter

from identity import telemetry
from identity.aws import AwsClients
from identity.config.document import BrokerConfig
from identity.config.models import CognitoConfig
from identity.errors import ConfigError, InternalError, ReauthenticationRequired, UpstreamError
from identity.models import MappedUser, VendedCredentials
from identity.records import StoredRecord, read_record
from identity.store import Store
from identity.vending.aws_errors import error_code, translate
from identity.vending.base import VendRequest, as_utc

if TYPE_CHECKING:
    from types_boto3_cognito_identity.type_defs import (
        GetCredentialsForIdentityInputTypeDef,
        GetOpenIdTokenForDeveloperIdentityInputTypeDef,
    )

__all__ = [
    "COGNITO_LOGIN_KEY",
    "IDENTITY_ID_TTL",
    "CachedIdentity",
    "CognitoDeveloperVendor",
    "CognitoEnhancedVendor",
    "identity_cache_key",
]

log = logging.getLogger("chime_broker.vending")

SERVICE: Final = "cognito-identity"
# The Logins key under which Cognito accepts its own OpenID tokens.
COGNITO_LOGIN_KEY: Final = "cognito-identity.amazonaws.com"
IDENTITY_ID_TTL: Final = 30 * 24 * 3600
_CACHE_PREFIX: Final = "vend:cognito-identity:"
# Identity ids a worker keeps in memory; emptied when full.
_KNOWN_IDENTITIES: Final = 16384
_IDENTITY_GONE: Final = "ResourceNotFoundException"


class CachedIdentity(StoredRecord):
    """The Cognito identity id resolved for one user (stored under ``identity_cache_key``)."""

    v: Literal[1] = 1
    identity_id: str


_CACHED_IDENTITY: Final = TypeAdapter(CachedIdentity)


def identity_cache_key(mode: str, *parts: str) -> str:
    """The store key for the identity id of ``parts`` (pool, login key, subject or user id)."""
    digest = hashlib.sha256("\x00".join((mode, *parts)).encode("utf-8")).hexdigest()
    return _CACHE_PREFIX + digest


def _cognito(config: BrokerConfig, mode: str) -> CognitoConfig:
    # the config check refuses a Cognito mode without aws.cognito; this narrows the type
    if config.aws.cognito is None:
        raise ConfigError([f"aws.cognito: required for exchange: {mode}"])
    return config.aws.cognito


@contextmanager
def _translated() -> Iterator[None]:
    """Every botocore failure of the Cognito calls inside leaves as a ``BrokerError``."""
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise translate(error, service=SERVICE) from error


class _CognitoCalls:
    """The Cognito calls both modes make, with every failure translated.

    The client is looked up per call (a dict read), so that one installed later is used.
    """

    def __init__(self, config: BrokerConfig, clients: AwsClients, store: Store, mode: str) -> None:
        self._pool = _cognito(config, mode).identity_pool_id
        self._clients = clients
        self._store = store
        # Identity ids this worker has read or resolved, by cache key (bounded).
        self._known: dict[str, str] = {}

    def _cached_identity(self, key: str) -> str | None:
        # An identity id never changes for its key; one this worker has seen needs no read
        # of the store. One that Cognito has since deleted fails its call, and is forgotten
        # here and in the store (``_forget_identity``).
        known = self._known.get(key)
        if known is None:
            cached = read_record(_CACHED_IDENTITY, self._store.get(key))
            if cached is not None:
                known = self._learn(key, cached.identity_id)
        telemetry.current().cache_lookup("identity_id", known is not None)
        return known

    def _learn(self, key: str, identity_id: str) -> str:
        if len(self._known) >= _KNOWN_IDENTITIES:
            self._known.clear()
        self._known[key] = identity_id
        return identity_id

    def _remember_identity(self, key: str, identity_id: str) -> None:
        record = _CACHED_IDENTITY.dump_json(CachedIdentity(identity_id=identity_id))
        self._store.set(key, record, IDENTITY_ID_TTL)
        self._learn(key, identity_id)

    def _forget_identity(self, key: str, identity_id: str, provider: str) -> None:
        log.warning(
            "cached Cognito identity no longer exists; resolving it again",
            extra={"fields": {"provider": provider, "identity_id": identity_id}},
        )
        self._known.pop(key, None)
        self._store.delete(key)

    def _credentials(
        self, identity_id: str, logins: Mapping[str, str], custom_role_arn: str | None = None
    ) -> VendedCredentials:
        params: GetCredentialsForIdentityInputTypeDef = {
            "IdentityId": identity_id,
            "Logins": dict(logins),
        }
        if custom_role_arn:
            params["CustomRoleArn"] = custom_role_arn
        with _translated():
            answer = self._clients.cognito_identity.get_credentials_for_identity(**params)
        credentials = answer["Credentials"]
        return VendedCredentials(
            access_key_id=credentials["AccessKeyId"],
            secret_access_key=credentials["SecretKey"],
            session_token=credentials["SessionToken"],
            expiration=as_utc(credentials["Expiration"]),
            identity_id=answer.get("IdentityId", identity_id),
        )


def _identity_gone(error: UpstreamError) -> bool:
    return error_code(error.__cause__ or error) == _IDENTITY_GONE


class CognitoEnhancedVendor(_CognitoCalls):
    """``exchange: cognito``: GetId (cached per pool, Logins key and subject), then
    GetCredentialsForIdentity with the provider's token and the provider's
    ``custom_role_arn``. Cognito verifies the token itself and may answer
    ``invalid_token``; a session without a usable token needs a new login."""

    def __init__(self, config: BrokerConfig, clients: AwsClients, store: Store) -> None:
        super().__init__(config, clients, store, "cognito")

    def vend(self, request: VendRequest) -> VendedCredentials:
        principal = request.principal
        if principal.login_key is None:
            raise InternalError(
                log_detail=f"provider {request.provider.name!r} gave no Cognito Logins key"
            )
        if not principal.login_token:
            raise ReauthenticationRequired(
                "Amazon Cognito needs a current token from the identity provider; sign in again"
            )
        logins = {principal.login_key: principal.login_token}
        key = identity_cache_key("cognito", self._pool, principal.login_key, principal.subject)
        custom_role_arn = request.provider.custom_role_arn
        cached = self._cached_identity(key)
        if cached is None:
            return self._credentials(self._get_id(key, logins, request), logins, custom_role_arn)
        try:
            return self._credentials(cached, logins, custom_role_arn)
        except UpstreamError as error:
            if not _identity_gone(error):
                raise
        self._forget_identity(key, cached, request.provider.name)
        return self._credentials(self._get_id(key, logins, request), logins, custom_role_arn)

    def _get_id(self, key: str, logins: Mapping[str, str], request: VendRequest) -> str:
        with _translated():
            answer = self._clients.cognito_identity.get_id(
                IdentityPoolId=self._pool, Logins=dict(logins)
            )
        identity_id = answer["IdentityId"]
        self._remember_identity(key, identity_id)
        log.info(
            "Cognito identity resolved",
            extra={"fields": {"provider": request.provider.name, "identity_id": identity_id}},
        )
        return identity_id


class CognitoDeveloperVendor(_CognitoCalls):
    """``exchange: cognito_developer``: GetOpenIdTokenForDeveloperIdentity with
    Logins ``{developer_provider_name: user_id}`` and the user's tags as principal
    tags (identity id cached per pool, developer provider and user id), then
    GetCredentialsForIdentity with the returned Cognito token."""

    def __init__(self, config: BrokerConfig, clients: AwsClients, store: Store) -> None:
        super().__init__(config, clients, store, "cognito_developer")
        cognito = _cognito(config, "cognito_developer")
        if cognito.developer_provider_name is None:
            raise ConfigError(
                ["aws.cognito.developer_provider_name: required for exchange: cognito_developer"]
            )
        self._developer_provider = cognito.developer_provider_name
        self._token_duration = cognito.token_duration

    def vend(self, request: VendRequest) -> VendedCredentials:
        user = request.user
        key = identity_cache_key(
            "cognito_developer", self._pool, self._developer_provider, user.user_id
        )
        cached = self._cached_identity(key)
        if cached is None:
            return self._vend(key, user, None)
        try:
            return self._vend(key, user, cached)
        except UpstreamError as error:
            if not _identity_gone(error):
                raise
        self._forget_identity(key, cached, request.provider.name)
        return self._vend(key, user, None)

    def _vend(self, key: str, user: MappedUser, identity_id: str | None) -> VendedCredentials:
        params: GetOpenIdTokenForDeveloperIdentityInputTypeDef = {
            "IdentityPoolId": self._pool,
            "Logins": {self._developer_provider: user.user_id},
            "PrincipalTags": dict(user.tags),
            "TokenDuration": self._token_duration,
        }
        if identity_id is not None:
            params["IdentityId"] = identity_id
        with _translated():
            answer = self._clients.cognito_identity.get_open_id_token_for_developer_identity(
                **params
            )
        resolved = answer["IdentityId"]
        if resolved != identity_id:
            self._remember_identity(key, resolved)
        return self._credentials(resolved, {COGNITO_LOGIN_KEY: answer["Token"]})
