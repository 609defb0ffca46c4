"""Broker sessions: what the broker keeps so that a client can get fresh credentials
without a new login, until ``service.session_lifetime`` ends.

A session is found by its token's SHA-256 (the token itself is never stored), and the record
is sealed with AES-GCM bound to that key, so the store holds nothing a reader could use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

from pydantic import Field, TypeAdapter

from identity import audit, telemetry
from identity.records import StoredRecord, read_record
from identity.revocation import Revocations, SessionIndex, covered
from identity.sealing import Sealer, token_hash
from identity.store import Store

TOKEN_PREFIX = "cbs_"  # noqa: S105 (a marker for secret scanners, not a secret)
_KEY_PREFIX = "session:"


class SessionRecord(StoredRecord):
    """One broker session."""

    v: Literal[1] = 1
    provider: str
    user_id: str
    display_name: str
    tags: Mapping[str, str]
    issuer: str
    subject: str
    created_at: float
    expires_at: float
    origin: str = "token"  # token | browser | guest
    claims: Mapping[str, Any] = Field(default_factory=dict)
    login_key: str | None = None
    login_token: str | None = Field(default=None, repr=False)
    login_token_expires_at: float | None = None
    refresh_token: str | None = Field(default=None, repr=False)
    rechecked_at: float | None = None
    # offline_access was asked for and the provider gave no refresh token: no re-checks.
    refresh_token_missing: bool = False
    end_session_url: str | None = None
    # The provider's own session id at login (OIDC sid, SAML SessionIndex), for its logouts.
    upstream_session_id: str | None = None

    def remaining(self, now: float) -> float:
        return self.expires_at - now


_SESSION: Final = TypeAdapter(SessionRecord)


def _audit_end(record: SessionRecord, ended_by: audit.EndedBy) -> None:
    telemetry.current().session_ended(record.origin)
    audit.session_ended(
        provider=record.provider,
        user_id=record.user_id,
        origin=record.origin,
        tags=record.tags,
        created_at=record.created_at,
        expires_at=record.expires_at,
        ended_by=ended_by,
    )


class SessionManager:
    """Creates, finds, updates and ends sessions in the store."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        session_lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``session_lifetime`` is ``service.session_lifetime``, the longest a session lives."""
        self._store = store
        self._sealer = sealer
        self._clock = clock
        self.revocations = Revocations(store, sealer)
        self.index = SessionIndex(store, sealer, clock=clock, session_lifetime=session_lifetime)

    def create(self, record: SessionRecord) -> str:
        """Store ``record`` under a new random token, listed in its user's index, in one
        write to the store; return the token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = token_hash(token)
        ttl = record.expires_at - self._clock()
        if ttl <= 0:
            return token
        sealed = self._sealer.seal(_SESSION.dump_json(record), context=_KEY_PREFIX + key)
        entry = self.index.entry(
            record.provider, record.user_id, key, record.created_at, record.expires_at, ttl
        )
        self._store.set_and_add_member(
            _KEY_PREFIX + key,
            sealed,
            ttl,
            entry.map_key,
            member=entry.member,
            member_value=entry.value,
            map_ttl=entry.map_ttl,
        )
        return token

    def find(self, token: str | None) -> SessionRecord | None:
        """The live session for ``token``, or None (unknown, malformed, ended, expired, or
        stored as a record this version does not read)."""
        return self.find_with(token)[0]

    def find_with(
        self, token: str | None, more_keys: Callable[[SessionRecord], Sequence[str]] | None = None
    ) -> tuple[SessionRecord | None, dict[str, bytes | None]]:
        """``find``; and, read in the same round trip as the revocation markers, the values
        at ``more_keys(record)``: keys the caller needs next (e.g. the user's cached
        credentials), so that a refresh costs two reads of the store, not three."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None, {}
        return self._live(token_hash(token), more_keys)

    def find_by_hash(self, session_hash: str) -> SessionRecord | None:
        """The live session stored under ``session_hash`` (a token's hash, as the per-user
        index lists it), or None."""
        return self._live(session_hash, None)[0]

    def _live(
        self, session_hash: str, more_keys: Callable[[SessionRecord], Sequence[str]] | None
    ) -> tuple[SessionRecord | None, dict[str, bytes | None]]:
        context = _KEY_PREFIX + session_hash
        sealed = self._store.get(context)
        if sealed is None:
            return None, {}
        record = read_record(_SESSION, self._sealer.open(sealed, context=context))
        if record is None or record.expires_at <= self._clock():
            return None, {}
        markers = self._marker_keys(record)
        more = list(more_keys(record)) if more_keys is not None else []
        values = self._store.get_many([*markers, *more])
        if covered(record.created_at, values[: len(markers)]):
            return None, {}
        return record, dict(zip(more, values[len(markers) :], strict=True))

    def _marker_keys(self, record: SessionRecord) -> list[str]:
        return self.revocations.marker_keys(
            record.provider,
            record.user_id,
            upstream_session_id=record.upstream_session_id,
            subject=record.subject,
        )

    def update(self, token: str, record: SessionRecord) -> bool:
        """Rewrite the live session of ``token`` as ``record``; False, writing nothing, when
        it has ended meanwhile (logged out, revoked or expired), so it stays ended."""
        key = token_hash(token)
        ttl = record.expires_at - self._clock()
        if ttl <= 0:
            return False
        sealed = self._sealer.seal(_SESSION.dump_json(record), context=_KEY_PREFIX + key)
        if not self._store.replace(_KEY_PREFIX + key, sealed, ttl):
            return False
        return not self._revoked(record)

    def _revoked(self, record: SessionRecord) -> bool:
        return covered(record.created_at, self._store.get_many(self._marker_keys(record)))

    def end(self, token: str | None, *, ended_by: audit.EndedBy = "logout") -> bool:
        """End the session (audited as ``ended_by``); True when there was one."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return False
        key = token_hash(token)
        sealed = self._store.get_and_delete(_KEY_PREFIX + key)
        if sealed is None:
            return False
        record = read_record(_SESSION, self._sealer.open(sealed, context=_KEY_PREFIX + key))
        if record is not None:
            self.index.remove(record.provider, record.user_id, key, record.created_at)
            _audit_end(record, ended_by)
        return True

    def end_by_hash(self, session_hash: str) -> SessionRecord | None:
        """End the session stored under ``session_hash`` (a token's hash, as the per-user
        index lists it) without touching the index; the ended record, or None."""
        sealed = self._store.get_and_delete(_KEY_PREFIX + session_hash)
        if sealed is None:
            return None
        context = _KEY_PREFIX + session_hash
        record = read_record(_SESSION, self._sealer.open(sealed, context=context))
        if record is not None:
            _audit_end(record, "revocation")
        return record
