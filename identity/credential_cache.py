"""Vended credentials reused while they have at least 15 minutes left.

AWS SDKs refresh container credentials 15 and 10 minutes before expiry, so anything shorter
would send every SDK call back to the broker. Entries are scoped to one session, one user,
one tag set and one role, and sealed with AES-GCM: the store never holds a readable secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Final, Literal

from pydantic import AwareDatetime, Field, TypeAdapter

from identity.models import VendedCredentials
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.store import Store

MIN_REMAINING = 15 * 60
_PREFIX = "creds:"


class CachedCredentials(StoredRecord):
    """One cache entry: the vended credentials as they were returned."""

    v: Literal[1] = 1
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

    def key(
        self, *, session: str, provider: str, user_id: str, tags: Mapping[str, str], role: str
    ) -> str:
        tag_text = json.dumps(sorted(tags.items()), separators=(",", ":"))
        return _PREFIX + self._sealer.key_hash(session, provider, user_id, tag_text, role)

    def get(self, key: str) -> VendedCredentials | None:
        if not self.enabled:
            return None
        sealed = self._store.get(key)
        if sealed is None:
            return None
        entry = read_record(_CACHED, self._sealer.open(sealed, context=key))
        if entry is None or entry.expiration.timestamp() - self._clock() < MIN_REMAINING:
            return None
        return VendedCredentials(
            access_key_id=entry.access_key_id,
            secret_access_key=entry.secret_access_key,
            session_token=entry.session_token,
            expiration=entry.expiration,
            identity_id=entry.identity_id,
        )

    def put(self, key: str, credentials: VendedCredentials) -> None:
        if not self.enabled:
            return
        ttl = credentials.expiration.timestamp() - self._clock() - MIN_REMAINING
        if ttl <= 0:
            return
        entry = CachedCredentials(
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            session_token=credentials.session_token,
            expiration=credentials.expiration,
            identity_id=credentials.identity_id,
        )
        body = _CACHED.dump_json(entry)
        self._store.set(key, self._sealer.seal(body, context=key), ttl)

    def forget(self, key: str) -> None:
        if self.enabled:
            self._store.delete(key)
