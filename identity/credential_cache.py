"""Vended credentials reused per user while they have at least 15 minutes left.

AWS SDKs refresh container credentials 15 and 10 minutes before expiry, so anything shorter
would send every SDK call back to the broker. Entries are sealed with AES-GCM: the store
never holds a readable secret.

Why sharing within one user is safe: an entry is found only by the same provider, user id,
role and exchange mode, and only when the tags (and, in ``cognito`` mode, the identity the
credentials belong to) are the ones the request would vend with. The same user, tags and
role give the same authority, whichever session asks; and AWS credentials cannot be
recalled once handed out, so keeping them per session bought no isolation. What keeps the
reuse within bounds:

* a session never receives credentials that outlive it (``not_after``, give or take the
  minute that AWS's clock and the vend's own latency add);
* one entry per user and role: a vend with other tags (the user's groups changed) replaces
  it, and ``sessions revoke`` drops it;
* nothing with less than 15 minutes left is served.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

from pydantic import AwareDatetime, Field, TypeAdapter

from identity import telemetry
from identity.models import VendedCredentials
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.store import Store

MIN_REMAINING = 15 * 60
# AWS stamps an expiry from its own clock when the call arrives, so credentials vended for a
# session's whole life end a little after the session: up to this much is taken as in time.
SESSION_END_LEEWAY = 60
_PREFIX = "creds:"
# built once: json.dumps with options builds a new encoder at every call
_TAGS: Final = json.JSONEncoder(separators=(",", ":"))


class CachedCredentials(StoredRecord):
    """One cache entry: the vended credentials as they were returned, and what they were
    vended for (``binding``: the tags and, in ``cognito`` mode, the identity)."""

    v: Literal[2] = 2
    binding: str
    access_key_id: str
    secret_access_key: str = Field(repr=False)
    session_token: str = Field(repr=False)
    expiration: AwareDatetime
    identity_id: str | None


_CACHED: Final = TypeAdapter(CachedCredentials)


class CredentialCache:
    """``service.cache_credentials``: when disabled, nothing is kept and nothing found."""

    def __init__(
        self, store: Store, sealer: Sealer, *, clock: Callable[[], float], enabled: bool = True
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock
        self.enabled = enabled

    def key(self, *, provider: str, user_id: str, role: str) -> str:
        """The one entry of ``user_id`` of ``provider`` for ``role`` (``MODE:ROLE_ARN``)."""
        return _PREFIX + self._sealer.key_hash(provider, user_id, role)

    def binding(self, tags: Mapping[str, str], identity: Sequence[str] = ()) -> str:
        """What an entry must have been vended for to serve a request with ``tags`` (and,
        in ``cognito`` mode, the login that picks the identity)."""
        tag_text = _TAGS.encode(sorted(tags.items()))
        return self._sealer.key_hash(tag_text, *identity)

    def get(
        self,
        key: str,
        *,
        binding: str,
        not_after: float,
        prefetched: Mapping[str, bytes | None] | None = None,
    ) -> VendedCredentials | None:
        """The entry at ``key`` when it was vended for ``binding``, has 15 minutes left and
        expires no later than ``not_after`` (the end of the session that receives it).
        ``prefetched`` may hold the stored value, read with others in one round trip.
        Counted as a hit or a miss while the cache is enabled."""
        if not self.enabled:
            return None
        if prefetched is not None and key in prefetched:
            sealed = prefetched[key]
        else:
            sealed = self._store.get(key)
        found = self._find(key, sealed, binding=binding, not_after=not_after)
        telemetry.current().cache_lookup("credentials", found is not None)
        return found

    def _find(
        self, key: str, sealed: bytes | None, *, binding: str, not_after: float
    ) -> VendedCredentials | None:
        if sealed is None:
            return None
        entry = read_record(_CACHED, self._sealer.open(sealed, context=key))
        if entry is None or entry.binding != binding:
            return None
        expires = entry.expiration.timestamp()
        if expires - self._clock() < MIN_REMAINING or expires > not_after + SESSION_END_LEEWAY:
            return None
        return VendedCredentials(
            access_key_id=entry.access_key_id,
            secret_access_key=entry.secret_access_key,
            session_token=entry.session_token,
            expiration=entry.expiration,
            identity_id=entry.identity_id,
        )

    def put(self, key: str, credentials: VendedCredentials, *, binding: str) -> None:
        if not self.enabled:
            return
        ttl = credentials.expiration.timestamp() - self._clock() - MIN_REMAINING
        if ttl <= 0:
            return
        entry = CachedCredentials(
            binding=binding,
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            session_token=credentials.session_token,
            expiration=credentials.expiration,
            identity_id=credentials.identity_id,
        )
        body = _CACHED.dump_json(entry)
        self._store.set(key, self._sealer.seal(body, context=key), ttl)

    def forget(self, key: str) -> bool:
        """Drop the entry at ``key``; True when there was one."""
        return self.enabled and self._store.get_and_delete(key) is not None
