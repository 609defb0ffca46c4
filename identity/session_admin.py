"""Operator actions on broker sessions: revoke a user's, a provider's or every session, and
list a user's live sessions, through the store that the serving brokers share.

A revocation writes its "not before" marker first (every broker sharing the store refuses
the covered sessions from then on), then, for a user, ends the sessions listed in the user's
index and drops their cached credentials. AWS cannot take back credentials it has already
issued, so each revocation also comes with the IAM deny statement that cuts them off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from identity.config.document import BrokerConfig
from identity.config.models import ProviderBase
from identity.credential_cache import CredentialCache
from identity.revocation import deny_statement
from identity.sessions import SessionManager
from identity.times import rfc3339
from identity.vending.sts import role_session_name

POLICY_VERSION = "2012-10-17"


class BrokerSessions(Protocol):
    """What session administration needs of ``identity.broker.Broker`` (which records
    upstream logins through a module that revokes through this one)."""

    config: BrokerConfig
    sessions: SessionManager
    credential_cache: CredentialCache

    def clock(self) -> float: ...

    def user_cache_key(self, provider_cfg: ProviderBase, user_id: str) -> str: ...


@dataclass(frozen=True)
class Revoked:
    """What one revocation did: its time, the sessions it ended here (a user's) and the
    policy document that denies credentials issued before it."""

    at: float
    scope: dict[str, str]
    ended_sessions: int = 0
    dropped_credentials: int = 0
    statements: list[dict[str, Any]] = field(default_factory=list)

    def policy(self) -> dict[str, Any]:
        return {"Version": POLICY_VERSION, "Statement": self.statements}

    def report(self) -> dict[str, Any]:
        return {
            "revoked": {**self.scope, "at": rfc3339(self.at)},
            "ended_sessions": self.ended_sessions,
            "dropped_credentials": self.dropped_credentials,
            "deny_policy": self.policy(),
        }


def _provider_names(config: BrokerConfig, provider: str | None) -> list[str]:
    if provider is None:
        return [p.name for p in config.providers]
    if config.provider(provider) is None:
        known = ", ".join(p.name for p in config.providers) or "none"
        raise ValueError(f"unknown provider {provider!r} (configured: {known})")
    return [provider]


def user_condition(config: BrokerConfig, provider: str, user_id: str) -> tuple[str, str]:
    """The condition key and value that single out ``user_id``'s AWS credentials when they
    come from ``provider``: the STS SourceIdentity, or the Cognito principal tag."""
    provider_cfg = config.provider(provider)
    if provider_cfg is not None and provider_cfg.exchange == "sts":
        return ("aws:SourceIdentity", role_session_name(user_id))
    return (f"aws:PrincipalTag/{config.chime.user_tag}", user_id)


def revoke_user(broker: BrokerSessions, user_id: str, provider: str | None = None) -> Revoked:
    """Revoke every session of ``user_id`` (of ``provider``, or of every provider)."""
    config = broker.config
    names = _provider_names(config, provider)
    at = broker.clock()
    ttl = config.service.session_lifetime
    sessions = broker.sessions
    for name in names:
        sessions.revocations.revoke_user(name, user_id, at=at, ttl=ttl)
    ended = dropped = 0
    conditions: list[tuple[str, str]] = []
    for name in names:
        condition = user_condition(config, name, user_id)
        if condition not in conditions:
            conditions.append(condition)
        provider_cfg = config.provider(name)
        for entry in sessions.index.live(name, user_id):
            if sessions.end_by_hash(entry.session_hash) is not None:
                ended += 1
        sessions.index.clear(name, user_id)
        if provider_cfg is not None and broker.credential_cache.forget(
            broker.user_cache_key(provider_cfg, user_id)
        ):
            dropped += 1
    scope = {"user_id": user_id, **({"provider": provider} if provider else {})}
    statements = [
        deny_statement(at, condition, sid=f"RevokeUserSessions{kind}")
        for condition in conditions
        for kind in ["Sts" if condition[0] == "aws:SourceIdentity" else "Cognito"]
    ]
    return Revoked(at, scope, ended, dropped, statements)


def revoke_provider(broker: BrokerSessions, provider: str) -> Revoked:
    """Revoke every session of every user of ``provider``."""
    _provider_names(broker.config, provider)
    at = broker.clock()
    broker.sessions.revocations.revoke_provider(
        provider, at=at, ttl=broker.config.service.session_lifetime
    )
    return Revoked(at, {"provider": provider}, statements=[deny_statement(at)])


def revoke_all(broker: BrokerSessions) -> Revoked:
    """Revoke every session of the broker."""
    at = broker.clock()
    broker.sessions.revocations.revoke_all(at=at, ttl=broker.config.service.session_lifetime)
    return Revoked(at, {"all": "true"}, statements=[deny_statement(at)])


def list_user(broker: BrokerSessions, user_id: str, provider: str | None = None) -> dict[str, Any]:
    """The user's live sessions: count, and per session its provider and times."""
    sessions: list[dict[str, Any]] = []
    for name in _provider_names(broker.config, provider):
        for entry in broker.sessions.index.live(name, user_id):
            # Revoked (by any marker: the user's, or the provider's own logout) or ended.
            if broker.sessions.find_by_hash(entry.session_hash) is None:
                continue
            sessions.append(
                {
                    "provider": name,
                    "created_at": rfc3339(entry.created_at),
                    "expires_at": rfc3339(entry.expires_at),
                }
            )
    sessions.sort(key=lambda s: str(s["created_at"]))
    return {"user_id": user_id, "count": len(sessions), "sessions": sessions}


__all__: Sequence[str] = (
    "Revoked",
    "list_user",
    "revoke_all",
    "revoke_provider",
    "revoke_user",
    "user_condition",
)
