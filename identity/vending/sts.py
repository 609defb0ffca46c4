"""Credentials from STS ``AssumeRole`` with session tags.

The broker's own role assumes the user role with the user's tags (the Chime user tag
among them), the user id as source identity and a duration no longer than the broker
session needs. RoleSessionName and SourceIdentity allow only ``[\\w+=,.@-]{2,64}``,
which botocore does not check: they are derived from the user id here and the
mapping is logged, so CloudTrail entries lead back to the user.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from identity.aws import AwsClients
from identity.config.document import BrokerConfig
from identity.config.models import ProviderBase, StsConfig
from identity.errors import InternalError
from identity.limits import (
    SESSION_NAME_MAX_LENGTH,
    SESSION_NAME_MIN_LENGTH,
    SESSION_NAME_PATTERN,
    SESSION_NAME_UNSAFE,
)
from identity.models import VendedCredentials
from identity.providers.guest import GuestConfig
from identity.vending.aws_errors import translate
from identity.vending.base import VendRequest, as_utc

__all__ = ["MIN_DURATION", "StsVendor", "assume_role_duration", "role_session_name"]

log = logging.getLogger("chime_broker.vending")

SERVICE: Final = "sts"
MIN_DURATION: Final = 900
DEFAULT_DURATION: Final[int] = StsConfig.model_fields["duration_seconds"].default
_KEPT_PREFIX: Final = 40
_HASH_CHARS: Final = 16


def role_session_name(user_id: str) -> str:
    """A RoleSessionName (and SourceIdentity) for ``user_id``: the id itself when it already
    fits ``[\\w+=,.@-]{2,64}``; otherwise the id with every other character replaced by
    ``-``, cut to 40 characters, then ``-`` and 16 hex characters of the id's SHA-256, so
    two ids never share a name (``a:b`` and ``a-b`` differ). Stable: the same id always
    gives the same name."""
    safe = SESSION_NAME_UNSAFE.sub("-", user_id)
    if safe == user_id and SESSION_NAME_MIN_LENGTH <= len(safe) <= SESSION_NAME_MAX_LENGTH:
        return safe
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return f"{safe[:_KEPT_PREFIX]}-{digest}"


def assume_role_duration(configured: int, max_duration: int | None) -> int:
    """DurationSeconds: the configured duration, cut to what the session has left, and
    never below STS's minimum of 900 s."""
    if max_duration is None:
        return max(MIN_DURATION, configured)
    return max(MIN_DURATION, min(configured, max_duration))


class StsVendor:
    """``exchange: sts``: AssumeRole into the provider's ``role_arn`` (default
    ``aws.sts.role_arn``) with the user's tags as session tags, for
    ``aws.sts.duration_seconds`` (a guest provider's ``credential_ttl``) cut to what
    the session has left."""

    def __init__(self, config: BrokerConfig, clients: AwsClients) -> None:
        sts = config.aws.sts
        self._default_role_arn = sts.role_arn if sts is not None else None
        self._duration = sts.duration_seconds if sts is not None else DEFAULT_DURATION
        self._clients = clients

    def _role_arn(self, provider: ProviderBase) -> str:
        role_arn = provider.role_arn or self._default_role_arn
        if role_arn is None:
            # the config check refuses an sts provider without a role
            raise InternalError(log_detail=f"provider {provider.name!r} has no STS role")
        return role_arn

    def _configured_duration(self, provider: ProviderBase) -> int:
        if isinstance(provider, GuestConfig):
            return provider.credential_ttl
        return self._duration

    def vend(self, request: VendRequest) -> VendedCredentials:
        user = request.user
        session_name = role_session_name(user.user_id)
        # role_session_name replaces ':', so SourceIdentity never has the reserved "aws:" prefix
        if not SESSION_NAME_PATTERN.fullmatch(session_name):
            raise InternalError(log_detail=f"derived an invalid session name {session_name!r}")
        role_arn = self._role_arn(request.provider)
        duration = assume_role_duration(
            self._configured_duration(request.provider), request.max_duration
        )
        log.info(
            "assuming the user role",
            extra={
                "fields": {
                    "provider": request.provider.name,
                    "user_id": user.user_id,
                    "role_arn": role_arn,
                    "role_session_name": session_name,
                    "source_identity": session_name,
                    "duration_seconds": duration,
                }
            },
        )
        try:
            answer = self._clients.sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=session_name,
                SourceIdentity=session_name,
                Tags=[{"Key": key, "Value": value} for key, value in user.tags.items()],
                DurationSeconds=duration,
            )
        except (BotoCoreError, ClientError) as error:
            raise translate(error, service=SERVICE) from error
        credentials = answer["Credentials"]
        return VendedCredentials(
            access_key_id=credentials["AccessKeyId"],
            secret_access_key=credentials["SecretAccessKey"],
            session_token=credentials["SessionToken"],
            expiration=as_utc(credentials["Expiration"]),
        )
