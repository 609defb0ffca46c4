"""Broker sessions: what the broker keeps so that a client can get fresh credentials
without a new login, until ``service.session_lifetime`` ends.

A session is found by its token's SHA-256 (the token itself is never stored), and the record
is sealed with AES-GCM bound to that key, so the store holds nothing a reader could use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from pydantic import Field, TypeAdapter

from identity.records import StoredRecord, read_record
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
    end_session_url: str | None = None

    def remaining(self, now: float) -> float:
        return self.expires_at - now


_SESSION: Final = TypeAdapter(SessionRecord)


class SessionManager:
    """Creates, finds, updates and ends sessions in the store."""

    def __init__(
        self, store: Store, sealer: Sealer, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock

    def create(self, record: SessionRecord) -> str:
        """Store ``record`` under a new random token and return the token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._write(token_hash(token), record)
        return token

    def find(self, token: str | None) -> SessionRecord | None:
        """The live session for ``token``, or None (unknown, malformed, ended, expired, or
        stored as a record this version does not read)."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        key = token_hash(token)
        sealed = self._store.get(_KEY_PREFIX + key)
        if sealed is None:
            return None
        record = read_record(_SESSION, self._sealer.open(sealed, context=_KEY_PREFIX + key))
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    def update(self, token: str, record: SessionRecord) -> None:
        self._write(token_hash(token), record)

    def end(self, token: str | None) -> bool:
        """End the session; True when there was one."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return False
        return self._store.get_and_delete(_KEY_PREFIX + token_hash(token)) is not None

    def _write(self, key: str, record: SessionRecord) -> None:
        ttl = record.expires_at - self._clock()
        if ttl <= 0:
            return
        body = _SESSION.dump_json(record)
        self._store.set(_KEY_PREFIX + key, self._sealer.seal(body, context=_KEY_PREFIX + key), ttl)
