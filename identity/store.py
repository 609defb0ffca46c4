"""The broker's state store: key/value with TTLs and atomic operations.

One contract, :class:`Store`, four backends chosen by URL scheme (:func:`open_store`):

* ``memory://`` — one process (tests, demo); thread-safe.
* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` — one machine, any
  number of worker processes and threads (WAL mode).
* ``redis://`` or ``rediss://`` — several machines (Redis >= 6.2).
* ``dynamodb://TABLE`` — several machines or Lambda; one DynamoDB table in the config's
  region (:mod:`identity.dynamodb_store`).

Keys are ``str``, values are ``bytes`` (the caller serialises). TTLs are seconds and
must be > 0; an expired key behaves as absent for every operation. Failures of the
backend surface as :class:`~identity.errors.StoreError`.

A key holds either a value or a member map (named members, each with a ``bytes`` value,
and one expiry for the whole map), never both: adding one member does not read or rewrite
the others, so a map collects many writers' entries without a read-modify-write.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

from identity.dynamodb_store import DynamoDbStore, table_from_url
from identity.redis_store import RedisStore
from identity.sqlite_store import SqliteStore
from identity.store_values import check_member as _check_member
from identity.store_values import check_member_write
from identity.store_values import check_ttl as _check_ttl
from identity.store_values import check_value as _check_value
from identity.store_values import counter_value as _counter_value

__all__ = [
    "DynamoDbStore",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "open_store",
    "store_location_problem",
    "validate_store_url",
]


class Store(Protocol):
    """Key/value state with TTLs; every operation is atomic across threads and processes
    that share the backend."""

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when absent or expired."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in order (None where absent or expired), read in one
        round trip to the backend."""
        ...

    def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds, replacing any value and TTL."""
        ...

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; True for exactly one caller."""
        ...

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds only if ``key`` holds a live value; False
        (and nothing written) when it is absent, expired or deleted meanwhile."""
        ...

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds only if ``key`` holds exactly ``expected``
        (read earlier with :meth:`get`); False, writing nothing, when it holds anything
        else, or nothing. Of racing callers with the same ``expected`` one wins."""
        ...

    def get_and_delete(self, key: str) -> bytes | None:
        """Remove ``key`` and return its value; of racing callers only one gets the value."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``, whether it holds a value or a member map; no error when it is
        absent."""
        ...

    def set_and_add_member(
        self,
        key: str,
        value: bytes,
        ttl: float,
        map_key: str,
        member: str,
        member_value: bytes,
        map_ttl: float,
    ) -> None:
        """Write ``key`` exactly as :meth:`set` does and put ``member`` = ``member_value``
        into the map at ``map_key`` (another key), in one round trip to the backend and
        atomically. The map then expires ``map_ttl`` seconds from now (an expired map is
        empty before the member goes in); its other members are neither read nor
        rewritten, so racing adds of different members all land.

        ``member`` is 1 to 128 of ``[A-Za-z0-9_-]`` (ValueError otherwise). Pass one
        ``map_ttl`` for a map, so that its expiry only moves later; a member that must
        expire sooner carries its expiry in its value.
        """
        ...

    def members(self, map_key: str) -> dict[str, bytes]:
        """The members of the map at ``map_key`` and their values; {} when it is absent
        or expired."""
        ...

    def remove_members(self, map_key: str, members: Sequence[str]) -> None:
        """Remove ``members`` from the map at ``map_key``; no error for absent ones. The
        map keeps its expiry."""
        ...

    def incr(self, key: str, ttl: float) -> int:
        """Add one to the counter at ``key`` and return the new count.

        A counter that is absent or expired starts at 1 and lives ``ttl`` seconds from
        then; later increments do not extend that life. The counter reads back through
        :meth:`get` as ASCII digits. Raises StoreError if ``key`` holds a non-integer.
        """
        ...

    def ping(self) -> None:
        """Return when the backend answers; raise StoreError otherwise."""
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...


# --------------------------------------------------------------------------- memory

# A sweep of expired items runs when the dict doubles past its last live size, so
# purging costs O(1) amortised and memory stays within about twice the live items.
_MEMORY_SWEEP_MIN = 1024

_Held = TypeVar("_Held")


class _Expiring(Generic[_Held]):
    """Items with an expiry: an expired item is dropped when touched, and every expired
    item is swept as the dict grows. The caller holds the lock."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[_Held, float]] = {}
        self._sweep_at = _MEMORY_SWEEP_MIN

    def live(self, key: str, now: float) -> _Held | None:
        item = self.items.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self.items[key]
            return None
        return item[0]

    def put(self, key: str, value: _Held, expires_at: float, now: float) -> None:
        self.items[key] = (value, expires_at)
        if len(self.items) >= self._sweep_at:
            for k in [k for k, (_, until) in self.items.items() if until <= now]:
                del self.items[k]
            self._sweep_at = max(_MEMORY_SWEEP_MIN, 2 * len(self.items))


class MemoryStore:
    """``memory://``: dicts under a lock, for one process. Expired entries and maps are
    dropped when touched and swept lazily as the dicts grow."""

    def __init__(self) -> None:
        self._entries: _Expiring[bytes] = _Expiring()
        self._maps: _Expiring[dict[str, bytes]] = _Expiring()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Entries and maps held, including expired ones not yet purged."""
        with self._lock:
            return len(self._entries.items) + len(self._maps.items)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._entries.live(key, time.monotonic())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = time.monotonic()
            return [self._entries.live(key, now) for key in keys]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            self._entries.put(key, value, now + ttl, now)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._entries.live(key, now) is not None:
                return False
            self._entries.put(key, value, now + ttl, now)
            return True

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._entries.live(key, now) is None:
                return False
            self._entries.put(key, value, now + ttl, now)
            return True

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._entries.live(key, now) != expected:
                return False
            self._entries.put(key, value, now + ttl, now)
            return True

    def get_and_delete(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.items.pop(key, None)
            if entry is None or entry[1] <= time.monotonic():
                return None
            return entry[0]

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.items.pop(key, None)
            self._maps.items.pop(key, None)

    def set_and_add_member(
        self,
        key: str,
        value: bytes,
        ttl: float,
        map_key: str,
        member: str,
        member_value: bytes,
        map_ttl: float,
    ) -> None:
        check_member_write(value, ttl, member, member_value, map_ttl)
        with self._lock:
            now = time.monotonic()
            self._entries.put(key, value, now + ttl, now)
            held = self._maps.live(map_key, now)
            if held is None:
                held = {}
            held[member] = member_value
            self._maps.put(map_key, held, now + map_ttl, now)

    def members(self, map_key: str) -> dict[str, bytes]:
        with self._lock:
            return dict(self._maps.live(map_key, time.monotonic()) or {})

    def remove_members(self, map_key: str, members: Sequence[str]) -> None:
        for member in members:
            _check_member(member)
        with self._lock:
            held = self._maps.live(map_key, time.monotonic())
            if held is None:
                return
            for member in members:
                held.pop(member, None)

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            entry = self._entries.items.get(key)
            if entry is None or entry[1] <= now:
                count, expires_at = 1, now + ttl
            else:
                count, expires_at = _counter_value(key, entry[0]) + 1, entry[1]
            self._entries.put(key, str(count).encode("ascii"), expires_at, now)
            return count

    def ping(self) -> None:
        return None

    def close(self) -> None:
        with self._lock:
            self._entries.items.clear()
            self._maps.items.clear()


# --------------------------------------------------------------------------- registry


def _sqlite_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"sqlite store URL has a host ({parts.netloc!r}); "
            "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if parts.query or parts.fragment:
        raise ValueError("sqlite store URL takes no query or fragment")
    path = parts.path[1:]
    if not path or path.endswith("/"):
        raise ValueError("sqlite store URL names no file")
    return path


def _open_memory(url: str, region: str | None) -> Store:
    return MemoryStore()


def _open_sqlite(url: str, region: str | None) -> Store:
    return SqliteStore(_sqlite_path(url))


def _open_redis(url: str, region: str | None) -> Store:
    return RedisStore(url)


def _open_dynamodb(url: str, region: str | None) -> Store:
    if not region:
        raise ValueError("a dynamodb store needs a region (the config's aws.region)")
    return DynamoDbStore(table_from_url(url), region=region)


def _check_memory(url: str) -> None:
    if url.split("://", 1)[1]:
        raise ValueError("memory store URL is exactly memory://")


def _check_redis(url: str) -> None:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("redis store URL names no host")
    if "decode_responses" in parse_qs(parts.query):
        raise ValueError("redis store URL must not set decode_responses: values are bytes")
    try:
        _ = parts.port
    except ValueError as e:
        raise ValueError(f"redis store URL: {e}") from None


_Opener = Callable[[str, str | None], Store]

# scheme -> (check the URL without side effects, open the store in a region)
_BACKENDS: dict[str, tuple[Callable[[str], object], _Opener]] = {
    "memory": (_check_memory, _open_memory),
    "sqlite": (_sqlite_path, _open_sqlite),
    "redis": (_check_redis, _open_redis),
    "rediss": (_check_redis, _open_redis),
    "dynamodb": (table_from_url, _open_dynamodb),
}


def _backend(url: str) -> tuple[Callable[[str], object], _Opener]:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ValueError(f"unknown store URL scheme {scheme!r}: expected one of {known}")
    return _BACKENDS[scheme]


def validate_store_url(url: str) -> None:
    """Raise ValueError describing what is wrong with a store URL; opens nothing."""
    check, _ = _backend(url)
    check(url)


def open_store(url: str, *, region: str | None = None) -> Store:
    """Open the store a URL names; ``region`` (the config's ``aws.region``) is where a
    DynamoDB table is, and is required for one.

    Raises ValueError for an unknown scheme, a malformed URL or a DynamoDB URL without a
    region, StoreError when the backend cannot be opened (SQLite opens its file and schema
    here; Redis and DynamoDB connect lazily, so call :meth:`Store.ping` to check them).
    """
    check, open_ = _backend(url)
    check(url)
    return open_(url, region)


def store_location_problem(url: str) -> str | None:
    """What would stop the store at ``url`` from opening, found without opening it or
    connecting: a malformed URL, or a SQLite file whose directory is missing or not
    writable. ``None`` when nothing is wrong that can be seen locally."""
    try:
        validate_store_url(url)
    except ValueError as e:
        return str(e)
    if url.split("://", 1)[0].lower() != "sqlite":
        return None
    path = os.path.abspath(_sqlite_path(url))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return f"the directory of the SQLite file does not exist: {directory}"
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            return f"the SQLite file is not readable and writable: {path}"
    elif not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory of the SQLite file is not writable: {directory}"
    return None
