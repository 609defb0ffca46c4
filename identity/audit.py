"""The audit trail: one ``audit`` log event each time credentials are handed out and each
time a broker session is ended (a logout, a refused re-check, a revocation), in a stable
schema (the README's "Metrics and audit") that operators ship to a SIEM.

Each event says who (provider, user id, the STS source identity or the Cognito identity
id), what (role, tags, lifetime, expiry) and how (exchange mode, the session's origin); the
log formatter adds the time and the request id. Never a secret: no key, session token,
refresh token or upstream token is passed here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

from identity.models import VendedCredentials
from identity.times import rfc3339

log = logging.getLogger("chime_broker.audit")

MESSAGE: Final = "audit"
SCHEMA_VERSION: Final = 1
EndedBy = Literal["logout", "recheck_refused", "revocation"]


def _emit(event: str, fields: Mapping[str, Any]) -> None:
    log.info(MESSAGE, extra={"fields": {"audit": SCHEMA_VERSION, "event": event, **fields}})


def credentials_issued(
    *,
    provider: str,
    user_id: str,
    exchange: str,
    origin: str,
    role_arn: str | None,
    source_identity: str | None,
    tags: Mapping[str, str],
    credentials: VendedCredentials,
    reused: bool,
    now: float,
) -> None:
    """Credentials for ``user_id`` handed to a client (``reused``: from the credential
    cache rather than from AWS)."""
    _emit(
        "credentials_issued",
        {
            "provider": provider,
            "user_id": user_id,
            "source_identity": source_identity,
            "identity_id": credentials.identity_id,
            "role_arn": role_arn,
            "tags": dict(tags),
            "duration_seconds": max(0, round(credentials.expiration.timestamp() - now)),
            "expiration": rfc3339(credentials.expiration),
            "exchange": exchange,
            "origin": origin,
            "reused": reused,
        },
    )


def session_ended(
    *,
    provider: str,
    user_id: str,
    origin: str,
    tags: Mapping[str, str],
    created_at: float,
    expires_at: float,
    ended_by: EndedBy,
) -> None:
    """A broker session ended before its time: a logout, a re-check the IdP refused, or a
    revocation (``sessions revoke``, the IdP's own logout)."""
    _emit(
        "session_ended",
        {
            "provider": provider,
            "user_id": user_id,
            "tags": dict(tags),
            "started_at": rfc3339(created_at),
            "expiration": rfc3339(expires_at),
            "origin": origin,
            "ended_by": ended_by,
        },
    )
