"""Ending sessions from outside a request: "not before" markers and the per-user index.

A revocation writes one constant-size marker — for a user of a provider, for a provider, for
every session, or for what an identity provider's logout names (its own session id, or its
subject) — holding the time of the revocation. A session created at or before the newest
marker that covers it reads as ended. The markers that may cover a session are read with one
:meth:`~identity.store.Store.get_many`, so a session lookup costs one extra round trip to
the store, whatever the number of sessions, and a login writes nothing for its logouts. A
marker lives as long as a session can (``service.session_lifetime``): after that, every
session it covers has expired anyway.

The per-user index lists the hashes, creation and expiry times of a user's sessions so that
they can be counted and ended without scanning the store. It is updated when a session is
created or ended; entries past their expiry are dropped whenever it is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import TypeAdapter

from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.store import Store

log = logging.getLogger("chime_broker.sessions")

_USER_MARKER = "revoked:user:"
_PROVIDER_MARKER = "revoked:provider:"
_ALL_MARKER = "revoked:all"
_UPSTREAM_SESSION_MARKER = "revoked:upstream-session:"
_UPSTREAM_SUBJECT_MARKER = "revoked:upstream-subject:"
_INDEX = "sessions-of:"
# Compare-and-set rounds an index update may take when other brokers update it at once;
# past them the update is dropped (the index only counts and lists sessions: the markers,
# not the index, end them).
_INDEX_TRIES = 40
# An index left with no sessions lives on this long, so that a racing add still finds it.
_EMPTY_INDEX_TTL = 60.0


class IndexedSession(StoredRecord):
    """One session in a user's index: its token hash and lifetime, nothing secret."""

    v: Literal[1] = 1
    session_hash: str
    created_at: float
    expires_at: float


class SessionIndexRecord(StoredRecord):
    """The sessions of one user of one provider."""

    v: Literal[1] = 1
    sessions: tuple[IndexedSession, ...] = ()


_INDEX_RECORD: Final = TypeAdapter(SessionIndexRecord)


def _marker_time(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class Revocations:
    """Writes and reads the "not before" markers."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    # A marker sits under each secret's key: written before a rotation of
    # service.secret_key it is found under the older one, and during a rolling rotation a
    # broker that has only the old secret sees the markers of one that has both.
    def _user_keys(self, provider: str, user_id: str) -> list[str]:
        return [
            _USER_MARKER + h for h in self._sealer.key_hashes("revoked-user", provider, user_id)
        ]

    def _provider_keys(self, provider: str) -> list[str]:
        return [_PROVIDER_MARKER + h for h in self._sealer.key_hashes("revoked-provider", provider)]

    def _upstream_keys(self, prefix: str, provider: str, value: str) -> list[str]:
        return [prefix + h for h in self._sealer.key_hashes(prefix, provider, value)]

    def not_before(
        self,
        provider: str,
        user_id: str,
        *,
        upstream_session_id: str | None = None,
        subject: str | None = None,
    ) -> float | None:
        """The newest revocation time covering ``user_id`` of ``provider`` (or, when given,
        the provider's own session ``upstream_session_id`` or ``subject``), or None."""
        keys = [*self._user_keys(provider, user_id), *self._provider_keys(provider), _ALL_MARKER]
        if upstream_session_id is not None:
            keys += self._upstream_keys(_UPSTREAM_SESSION_MARKER, provider, upstream_session_id)
        if subject is not None:
            keys += self._upstream_keys(_UPSTREAM_SUBJECT_MARKER, provider, subject)
        times = [t for t in map(_marker_time, self._store.get_many(keys)) if t is not None]
        return max(times) if times else None

    def covers(
        self,
        provider: str,
        user_id: str,
        created_at: float,
        *,
        upstream_session_id: str | None = None,
        subject: str | None = None,
    ) -> bool:
        """True when a session created at ``created_at`` has been revoked."""
        revoked = self.not_before(
            provider, user_id, upstream_session_id=upstream_session_id, subject=subject
        )
        return revoked is not None and created_at <= revoked

    def revoke_user(self, provider: str, user_id: str, *, at: float, ttl: float) -> None:
        for key in self._user_keys(provider, user_id):
            self._mark(key, at, ttl)

    def revoke_provider(self, provider: str, *, at: float, ttl: float) -> None:
        for key in self._provider_keys(provider):
            self._mark(key, at, ttl)

    def revoke_all(self, *, at: float, ttl: float) -> None:
        self._mark(_ALL_MARKER, at, ttl)

    def revoke_upstream_session(
        self, provider: str, session_id: str, *, at: float, ttl: float
    ) -> None:
        """End the sessions opened under the provider's own session ``session_id``."""
        for key in self._upstream_keys(_UPSTREAM_SESSION_MARKER, provider, session_id):
            self._mark(key, at, ttl)

    def revoke_upstream_subject(
        self, provider: str, subject: str, *, at: float, ttl: float
    ) -> None:
        """End the sessions of the provider's ``subject``, whatever user id it mapped to."""
        for key in self._upstream_keys(_UPSTREAM_SUBJECT_MARKER, provider, subject):
            self._mark(key, at, ttl)

    def _mark(self, key: str, at: float, ttl: float) -> None:
        # A marker never moves back: an earlier time would revive sessions it had ended.
        current = _marker_time(self._store.get(key))
        self._store.set(key, repr(max(at, current or at)).encode("ascii"), ttl)


class SessionIndex:
    """Per user: which sessions exist, without the tokens."""

    def __init__(self, store: Store, sealer: Sealer, *, clock: Callable[[], float]) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock

    def _key(self, provider: str, user_id: str) -> str:
        return _INDEX + self._sealer.key_hash("sessions-of", provider, user_id)

    def live(self, provider: str, user_id: str) -> list[IndexedSession]:
        """The user's sessions that have not expired, oldest first (also those listed
        before a rotation of ``service.secret_key``, under an older key)."""
        now = self._clock()
        found: dict[str, IndexedSession] = {}
        for key in self._keys(provider, user_id):
            for entry in self._read(key, now):
                found.setdefault(entry.session_hash, entry)
        return sorted(found.values(), key=lambda s: s.created_at)

    def _keys(self, provider: str, user_id: str) -> list[str]:
        return [_INDEX + h for h in self._sealer.key_hashes("sessions-of", provider, user_id)]

    def add(
        self, provider: str, user_id: str, session_hash: str, created_at: float, expires_at: float
    ) -> None:
        entry = IndexedSession(
            session_hash=session_hash, created_at=created_at, expires_at=expires_at
        )
        self._update(
            self._key(provider, user_id),
            lambda entries: [*(s for s in entries if s.session_hash != session_hash), entry],
        )

    def remove(self, provider: str, user_id: str, session_hashes: Sequence[str]) -> None:
        gone = set(session_hashes)
        for key in self._keys(provider, user_id):
            self._update(key, lambda entries: [s for s in entries if s.session_hash not in gone])

    def _update(
        self, key: str, change: Callable[[list[IndexedSession]], list[IndexedSession]]
    ) -> None:
        # Read, change, and write back only over what was read (compare-and-set): two
        # brokers adding sessions of one user at once both land, in two round trips each.
        for _ in range(_INDEX_TRIES):
            now = self._clock()
            sealed = self._store.get(key)
            entries = self._entries(key, sealed, now)
            changed = change(entries)
            if changed == entries and sealed is not None:
                return
            body = _INDEX_RECORD.dump_json(SessionIndexRecord(sessions=tuple(changed)))
            ttl = max((s.expires_at for s in changed), default=now + _EMPTY_INDEX_TTL) - now
            if ttl <= 0:
                return
            new = self._sealer.seal(body, context=key)
            if sealed is None:
                if self._store.set_if_absent(key, new, ttl):
                    return
            elif self._store.compare_and_set(key, sealed, new, ttl):
                return
        log.warning("session index of a user changed under %d tries; left as is", _INDEX_TRIES)

    def clear(self, provider: str, user_id: str) -> None:
        for key in self._keys(provider, user_id):
            self._store.delete(key)

    def _read(self, key: str, now: float) -> list[IndexedSession]:
        return self._entries(key, self._store.get(key), now)

    def _entries(self, key: str, sealed: bytes | None, now: float) -> list[IndexedSession]:
        if sealed is None:
            return []
        record = read_record(_INDEX_RECORD, self._sealer.open(sealed, context=key))
        if record is None:
            return []
        return sorted(
            (s for s in record.sessions if s.expires_at > now), key=lambda s: s.created_at
        )


def rfc3339(at: float) -> str:
    """``at`` as RFC 3339 UTC, whole seconds."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deny_statement(
    issued_before: float, condition: tuple[str, str] | None = None, sid: str | None = None
) -> dict[str, Any]:
    """An IAM statement denying everything to credentials issued before ``issued_before``
    (rounded up to the next whole second), optionally only where ``condition`` (a global
    condition key and the value it must equal) holds."""
    conditions: dict[str, Any] = {
        "DateLessThan": {"aws:TokenIssueTime": rfc3339(math.ceil(issued_before))}
    }
    if condition is not None:
        conditions["StringEquals"] = {condition[0]: condition[1]}
    statement: dict[str, Any] = {
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": conditions,
    }
    if sid is not None:
        statement = {"Sid": sid, **statement}
    return statement
