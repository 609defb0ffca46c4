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
"""

from __future__ import annotations

import itertools
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from identity.dynamodb_store import DynamoDbStore, table_from_url
from identity.errors import StoreError
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
        """Remove ``key``; no error when it is absent."""
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

# A sweep of expired entries runs when the dict doubles past its last live size, so
# purging costs O(1) amortised and memory stays within about twice the live entries.
_MEMORY_SWEEP_MIN = 1024


class MemoryStore:
    """``memory://``: a dict under a lock, for one process. Expired entries are dropped
    when touched and swept lazily as the dict grows."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._sweep_at = _MEMORY_SWEEP_MIN

    def __len__(self) -> int:
        """Entries held, including expired ones not yet purged."""
        with self._lock:
            return len(self._entries)

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: bytes, expires_at: float, now: float) -> None:
        self._entries[key] = (value, expires_at)
        if len(self._entries) >= self._sweep_at:
            expired = [k for k, (_, until) in self._entries.items() if until <= now]
            for k in expired:
                del self._entries[k]
            self._sweep_at = max(_MEMORY_SWEEP_MIN, 2 * len(self._entries))

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, time.monotonic())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = time.monotonic()
            return [self._live(key, now) for key in keys]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            self._put(key, value, now + ttl, now)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._live(key, now) is not None:
                return False
            self._put(key, value, now + ttl, now)
            return True

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._live(key, now) is None:
                return False
            self._put(key, value, now + ttl, now)
            return True

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            if self._live(key, now) != expected:
                return False
            self._put(key, value, now + ttl, now)
            return True

    def get_and_delete(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None or entry[1] <= time.monotonic():
                return None
            return entry[0]

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._lock:
            now = time.monotonic()
            entry = self._entries.get(key)
            if entry is None or entry[1] <= now:
                count, expires_at = 1, now + ttl
            else:
                count, expires_at = _counter_value(key, entry[0]) + 1, entry[1]
            self._put(key, str(count).encode("ascii"), expires_at, now)
            return count

    def ping(self) -> None:
        return None

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


# --------------------------------------------------------------------------- sqlite

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS broker_state (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS broker_state_expires_at ON broker_state (expires_at)",
)
_SQLITE_UPSERT = (
    "INSERT INTO broker_state (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
# The conflict branch only replaces an expired row; RETURNING yields a row iff we wrote.
_SQLITE_UPDATE_LIVE = (
    "UPDATE broker_state SET value = ?, expires_at = ? WHERE key = ? AND expires_at > ?"
)
_SQLITE_UPDATE_LIVE_SAME = (
    "UPDATE broker_state SET value = ?, expires_at = ? "
    "WHERE key = ? AND value = ? AND expires_at > ?"
)
_SQLITE_INSERT_IF_ABSENT = _SQLITE_UPSERT + " WHERE broker_state.expires_at <= ? RETURNING 1"
# Seconds a writer waits for the write lock held by another connection or process.
SQLITE_BUSY_TIMEOUT = 5.0
# Every this many writes, the writer also deletes all expired rows (indexed).
_SQLITE_PURGE_EVERY = 256
# Idle connections kept for reuse; more are closed when handed back.
_SQLITE_MAX_IDLE = 32

# Connections inherited across fork: the child must neither use nor close them
# (closing drops the child's POSIX locks on the file), so they are kept referenced.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


class SqliteStore:
    """``sqlite://``: one WAL-mode file shared by every thread and process on the machine.

    Each operation borrows a connection that no other thread uses meanwhile; the pool
    belongs to the process that made it, so a forked child opens its own connections.
    Times are wall-clock (``time.time``) because several processes compare them. A write
    waits ``busy_timeout`` seconds for another's lock, then fails as StoreError.
    """

    def __init__(self, path: str, *, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._connections: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._writes = itertools.count(1)
        with self._connection() as conn:
            for statement in _SQLITE_SCHEMA:
                conn.execute(statement)
            self._purge(conn)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def _connect(self) -> sqlite3.Connection:
        if not os.path.exists(self._path):
            # Create the file owner-only; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite store {self._path}: WAL mode unavailable ({mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkout(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreError(f"sqlite store {self._path}: closed")
            if self._pid != os.getpid():
                _INHERITED_CONNECTIONS.extend(self._connections)
                self._connections, self._idle, self._pid = [], [], os.getpid()
            if self._idle:
                return self._idle.pop()
        conn = self._connect()
        with self._lock:
            self._connections.append(conn)
        return conn

    def _checkin(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.rollback()
        with self._lock:
            if not self._closed and len(self._idle) < _SQLITE_MAX_IDLE:
                self._idle.append(conn)
                return
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._checkout()
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"sqlite store {self._path}: {e}") from e
        try:
            yield conn
        except sqlite3.Error as e:
            raise StoreError(f"sqlite store {self._path}: {e}") from e
        finally:
            try:
                self._checkin(conn)
            except sqlite3.Error:
                self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
            if conn in self._idle:
                self._idle.remove(conn)
        conn.close()

    def _purge(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM broker_state WHERE expires_at <= ?", (time.time(),))

    def _wrote(self, conn: sqlite3.Connection) -> None:
        if next(self._writes) % _SQLITE_PURGE_EVERY == 0:
            self._purge(conn)

    def get(self, key: str) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT value FROM broker_state WHERE key = ? AND expires_at > ?",
                (key, time.time()),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        wanted = list(dict.fromkeys(keys))
        marks = ",".join("?" * len(wanted))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT key, value FROM broker_state WHERE key IN ({marks}) AND expires_at > ?",  # noqa: S608 (placeholders only)
                (*wanted, time.time()),
            ).fetchall()
        found = {key: bytes(value) for key, value in rows}
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        _check_value(value)
        _check_ttl(ttl)
        with self._connection() as conn:
            conn.execute(_SQLITE_UPSERT, (key, value, time.time() + ttl))
            self._wrote(conn)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._connection() as conn:
            now = time.time()
            # fetchall: the statement (and its write lock) ends only when fully stepped.
            written = conn.execute(_SQLITE_INSERT_IF_ABSENT, (key, value, now + ttl, now))
            won = bool(written.fetchall())
            self._wrote(conn)
        return won

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        return self._update_live(key, value, ttl)

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        return self._update_live(key, value, ttl, expected=expected)

    def _update_live(
        self, key: str, value: bytes, ttl: float, *, expected: bytes | None = None
    ) -> bool:
        """Overwrite ``key`` while it is live (and, given ``expected``, holds exactly it);
        True when written."""
        _check_value(value)
        _check_ttl(ttl)
        with self._connection() as conn:
            now = time.time()
            if expected is None:
                cursor = conn.execute(_SQLITE_UPDATE_LIVE, (value, now + ttl, key, now))
            else:
                cursor = conn.execute(
                    _SQLITE_UPDATE_LIVE_SAME, (value, now + ttl, key, expected, now)
                )
            updated = cursor.rowcount
            self._wrote(conn)
        return bool(updated == 1)

    def get_and_delete(self, key: str) -> bytes | None:
        with self._connection() as conn:
            rows = conn.execute(
                "DELETE FROM broker_state WHERE key = ? RETURNING value, expires_at", (key,)
            ).fetchall()
        if not rows or rows[0][1] <= time.time():
            return None
        return bytes(rows[0][0])

    def delete(self, key: str) -> None:
        with self._connection() as conn:
            conn.execute("DELETE FROM broker_state WHERE key = ?", (key,))

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            row = conn.execute(
                "SELECT value, expires_at FROM broker_state WHERE key = ?", (key,)
            ).fetchone()
            if row is None or row[1] <= now:
                count, expires_at = 1, now + ttl
            else:
                count, expires_at = _counter_value(key, bytes(row[0])) + 1, row[1]
            conn.execute(_SQLITE_UPSERT, (key, str(count).encode("ascii"), expires_at))
            conn.execute("COMMIT")
            self._wrote(conn)
        return count

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1 FROM broker_state LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            mine = self._connections if self._pid == os.getpid() else []
            self._connections, self._idle = [], []
        for conn in mine:
            conn.close()


# --------------------------------------------------------------------------- redis

_REDIS_PREFIX = "chime-broker:"
# Seconds to connect and to wait for a reply: a lost or hung Redis answers 503 that soon.
REDIS_CONNECT_TIMEOUT = 1.0
REDIS_SOCKET_TIMEOUT = 3.0
# INCR keeps an existing TTL; a counter without one (new, or written by an older
# broker) gets it here, inside the script, so no increment ever sees a counter
# that never expires.
_REDIS_INCR = """
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
"""


_REDIS_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _reply_bytes(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        raise StoreError("redis store: replies are decoded; remove decode_responses from the URL")
    return value


class RedisStore:
    """``redis://`` / ``rediss://``: redis-py over a connection pool, keys prefixed
    ``chime-broker:``. Needs Redis >= 6.2 (GETDEL). The pool reconnects after fork."""

    def __init__(self, url: str) -> None:
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                socket_timeout=REDIS_SOCKET_TIMEOUT,
                health_check_interval=30,
                # Only connection failures are retried: a command that timed out may
                # have run, and running INCR or GETDEL twice would be wrong.
                retry=Retry(
                    ExponentialBackoff(cap=0.2, base=0.02),
                    2,
                    supported_errors=(redis.ConnectionError,),
                ),
            )
        except ValueError as e:
            raise ValueError(f"invalid redis store URL: {e}") from None
        self._incr = self._client.register_script(_REDIS_INCR)
        self._compare_and_set = self._client.register_script(_REDIS_COMPARE_AND_SET)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as e:
            raise StoreError(f"redis store: {e}") from e

    def get(self, key: str) -> bytes | None:
        with self._errors():
            value = self._client.get(_REDIS_PREFIX + key)
        return _reply_bytes(value)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors():
            values = self._client.mget([_REDIS_PREFIX + key for key in keys])
        return [_reply_bytes(value) for value in values]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._set(key, value, ttl)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        return self._set(key, value, ttl, nx=True)

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        return self._set(key, value, ttl, xx=True)

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._errors():
            swapped = self._compare_and_set(
                keys=[_REDIS_PREFIX + key], args=[expected, value, _milliseconds(ttl)]
            )
        return bool(swapped == 1)

    def _set(
        self, key: str, value: bytes, ttl: float, *, nx: bool = False, xx: bool = False
    ) -> bool:
        """SET with a TTL (``nx``: only when absent; ``xx``: only when live); True when written."""
        _check_value(value)
        _check_ttl(ttl)
        with self._errors():
            written = self._client.set(
                _REDIS_PREFIX + key, value, px=_milliseconds(ttl), nx=nx, xx=xx
            )
        return bool(written)

    def get_and_delete(self, key: str) -> bytes | None:
        with self._errors():
            value = self._client.getdel(_REDIS_PREFIX + key)
        return _reply_bytes(value)

    def delete(self, key: str) -> None:
        with self._errors():
            self._client.delete(_REDIS_PREFIX + key)

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._errors():
            count = self._incr(keys=[_REDIS_PREFIX + key], args=[_milliseconds(ttl)])
        return int(count)

    def ping(self) -> None:
        with self._errors():
            self._client.ping()

    def close(self) -> None:
        with self._errors():
            self._client.close()


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
