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
they can be counted and ended without scanning the store. It is a member map per user and
period of ``service.session_lifetime`` (a live session began in this period or the one
before), with one sealed entry per session, written together with the session record in
one round trip (:meth:`~identity.store.Store.set_and_add_member`): nothing is read, brokers
creating sessions of one user at once all land, and no map outgrows one lifetime's
sessions. Ending a session removes its entry; entries past their expiry are dropped
whenever the index is read. Sessions that older brokers listed in one sealed list per user
(``sessions-of:``) are read, and removed from it, as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, NamedTuple

from pydantic import TypeAdapter

from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.store import Store
from identity.times import rfc3339

log = logging.getLogger("chime_broker.sessions")

_USER_MARKER = "revoked:user:"
_PROVIDER_MARKER = "revoked:provider:"
_ALL_MARKER = "revoked:all"
_UPSTREAM_SESSION_MARKER = "revoked:upstream-session:"
_UPSTREAM_SUBJECT_MARKER = "revoked:upstream-subject:"
# A distinct prefix: a Redis hash never sits at a key an older broker writes strings to.
_INDEX_MAP = "session-index:"
# The list older brokers kept per user (read-modify-written with compare-and-set).
_INDEX = "sessions-of:"
# Compare-and-set rounds an update of such a list may take when other brokers update it at
# once; past them the update is dropped (the index only counts and lists sessions: the
# markers, not the index, end them).
_INDEX_TRIES = 40
# A list left with no sessions lives on this long, so that an older broker's racing add
# still finds it.
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
_INDEXED_SESSION: Final = TypeAdapter(IndexedSession)


class IndexEntry(NamedTuple):
    """A new session's entry in its user's index: member ``member`` of the map at
    ``map_key``, sealed, and how long that map must live to outlast the session."""

    map_key: str
    member: str
    value: bytes
    map_ttl: float


def _member_context(map_key: str, member: str) -> str:
    # Binds an entry to its map and member: copied under another session it does not open.
    return f"{map_key}/{member}"


def _marker_time(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def covered(created_at: float, markers: Sequence[bytes | None]) -> bool:
    """True when a session created at ``created_at`` is revoked by the newest of the
    ``markers`` read (absent ones are None)."""
    times = [t for t in map(_marker_time, markers) if t is not None]
    return bool(times) and created_at <= max(times)


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

    def marker_keys(
        self,
        provider: str,
        user_id: str,
        *,
        upstream_session_id: str | None = None,
        subject: str | None = None,
    ) -> list[str]:
        """The keys of every marker that may cover such a session, for one ``get_many``."""
        keys = [*self._user_keys(provider, user_id), *self._provider_keys(provider), _ALL_MARKER]
        if upstream_session_id is not None:
            keys += self._upstream_keys(_UPSTREAM_SESSION_MARKER, provider, upstream_session_id)
        if subject is not None:
            keys += self._upstream_keys(_UPSTREAM_SUBJECT_MARKER, provider, subject)
        return keys

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
    """Per user: which sessions exist, without the tokens.

    ``session_lifetime`` is the longest a session lives (``service.session_lifetime``):
    each new entry keeps the user's map alive at least that long.
    """

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        clock: Callable[[], float],
        session_lifetime: float,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock
        self._session_lifetime = session_lifetime

    def _bucket(self, at: float) -> int:
        return math.floor(at / self._session_lifetime)

    def _map_key(self, user_hash: str, bucket: int) -> str:
        return f"{_INDEX_MAP}{user_hash}:{bucket}"

    def _map_keys(self, provider: str, user_id: str) -> list[str]:
        """The maps that may list a live session: a session lives at most
        ``session_lifetime``, so it was created in this period or the one before."""
        current = self._bucket(self._clock())
        hashes = self._sealer.key_hashes("sessions-of", provider, user_id)
        return [self._map_key(h, b) for h in hashes for b in (current, current - 1)]

    def _keys(self, provider: str, user_id: str) -> list[str]:
        return [_INDEX + h for h in self._sealer.key_hashes("sessions-of", provider, user_id)]

    def entry(
        self,
        provider: str,
        user_id: str,
        session_hash: str,
        created_at: float,
        expires_at: float,
        ttl: float,
    ) -> IndexEntry:
        """The entry listing a new session that lives ``ttl`` more seconds, for the caller
        to write with the session itself (:meth:`~identity.store.Store.set_and_add_member`)."""
        # One map per period of ``session_lifetime``: a map holds the sessions started in
        # one period, and its life ends one lifetime after its last session began, so a
        # user who signs in again and again never grows one map past a lifetime's worth.
        map_key = self._map_key(
            self._sealer.key_hash("sessions-of", provider, user_id), self._bucket(created_at)
        )
        body = _INDEXED_SESSION.dump_json(
            IndexedSession(session_hash=session_hash, created_at=created_at, expires_at=expires_at)
        )
        sealed = self._sealer.seal(body, context=_member_context(map_key, session_hash))
        return IndexEntry(map_key, session_hash, sealed, max(self._session_lifetime, ttl))

    def live(self, provider: str, user_id: str) -> list[IndexedSession]:
        """The user's sessions that have not expired, oldest first (also those listed
        before a rotation of ``service.secret_key``, under an older key, and those in an
        older broker's list). Expired entries found on the way are removed."""
        now = self._clock()
        found: dict[str, IndexedSession] = {}
        for map_key in self._map_keys(provider, user_id):
            expired: list[str] = []
            for member, value in self._store.members(map_key).items():
                opened = self._sealer.open(value, context=_member_context(map_key, member))
                entry = read_record(_INDEXED_SESSION, opened)
                if entry is None or entry.session_hash != member:
                    continue
                if entry.expires_at <= now:
                    expired.append(member)
                else:
                    found.setdefault(member, entry)
            if expired:
                self._store.remove_members(map_key, expired)
        legacy = self._keys(provider, user_id)
        for key, sealed in zip(legacy, self._store.get_many(legacy), strict=True):
            for entry in self._entries(key, sealed, now):
                found.setdefault(entry.session_hash, entry)
        return sorted(found.values(), key=lambda s: s.created_at)

    def remove(self, provider: str, user_id: str, session_hash: str, created_at: float) -> None:
        """Take the session out of the index: out of its period's map (under each secret),
        and out of an older broker's list where there is one."""
        bucket = self._bucket(created_at)
        for user_hash in self._sealer.key_hashes("sessions-of", provider, user_id):
            self._store.remove_members(self._map_key(user_hash, bucket), [session_hash])

        def without(entries: list[IndexedSession]) -> list[IndexedSession]:
            return [s for s in entries if s.session_hash != session_hash]

        legacy = self._keys(provider, user_id)
        for key, sealed in zip(legacy, self._store.get_many(legacy), strict=True):
            if sealed is not None:
                self._update(key, sealed, without)

    def _update(
        self,
        key: str,
        sealed: bytes | None,
        change: Callable[[list[IndexedSession]], list[IndexedSession]],
    ) -> None:
        """Change an older broker's list, starting from ``sealed`` as read: write back only
        over what was read (compare-and-set), so that the older broker's racing adds land."""
        for _ in range(_INDEX_TRIES):
            if sealed is None:
                return
            now = self._clock()
            entries = self._entries(key, sealed, now)
            changed = change(entries)
            if changed == entries:
                return
            body = _INDEX_RECORD.dump_json(SessionIndexRecord(sessions=tuple(changed)))
            ttl = max((s.expires_at for s in changed), default=now + _EMPTY_INDEX_TTL) - now
            if ttl <= 0:
                return
            new = self._sealer.seal(body, context=key)
            if self._store.compare_and_set(key, sealed, new, ttl):
                return
            sealed = self._store.get(key)
        log.warning("session index of a user changed under %d tries; left as is", _INDEX_TRIES)

    def clear(self, provider: str, user_id: str) -> None:
        for key in [*self._map_keys(provider, user_id), *self._keys(provider, user_id)]:
            self._store.delete(key)

    def _entries(self, key: str, sealed: bytes | None, now: float) -> list[IndexedSession]:
        if sealed is None:
            return []
        record = read_record(_INDEX_RECORD, self._sealer.open(sealed, context=key))
        if record is None:
            return []
        return sorted(
            (s for s in record.sessions if s.expires_at > now), key=lambda s: s.created_at
        )


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
