"""``sqlite://``: the state store in one SQLite file (WAL mode), shared by every worker
process and thread on one machine. The contract is :class:`identity.store.Store`."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from identity.errors import StoreError
from identity.store_values import check_member as _check_member
from identity.store_values import check_member_write
from identity.store_values import check_ttl as _check_ttl
from identity.store_values import check_value as _check_value
from identity.store_values import counter_value as _counter_value

__all__ = ["SQLITE_BUSY_TIMEOUT", "SqliteStore"]

_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS broker_state (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS broker_state_expires_at ON broker_state (expires_at)",
    # A member map: its expiry in broker_maps, its members in broker_members.
    """CREATE TABLE IF NOT EXISTS broker_maps (
        key TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS broker_maps_expires_at ON broker_maps (expires_at)",
    """CREATE TABLE IF NOT EXISTS broker_members (
        key TEXT NOT NULL,
        member TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (key, member)
    ) WITHOUT ROWID""",
)
_SQLITE_UPSERT = (
    "INSERT INTO broker_state (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_SQLITE_UPDATE_LIVE = (
    "UPDATE broker_state SET value = ?, expires_at = ? WHERE key = ? AND expires_at > ?"
)
_SQLITE_UPDATE_LIVE_SAME = (
    "UPDATE broker_state SET value = ?, expires_at = ? "
    "WHERE key = ? AND value = ? AND expires_at > ?"
)
# The conflict branch only replaces an expired row; RETURNING yields a row iff we wrote.
_SQLITE_INSERT_IF_ABSENT = _SQLITE_UPSERT + " WHERE broker_state.expires_at <= ? RETURNING 1"
# Members left by an expired (or purged) map must not show in the map an add revives.
_SQLITE_CLEAR_DEAD_MEMBERS = (
    "DELETE FROM broker_members WHERE key = ? AND NOT EXISTS "
    "(SELECT 1 FROM broker_maps WHERE key = ? AND expires_at > ?)"
)
_SQLITE_UPSERT_MAP = (
    "INSERT INTO broker_maps (key, expires_at) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
)
_SQLITE_UPSERT_MEMBER = (
    "INSERT INTO broker_members (key, member, value) VALUES (?, ?, ?) "
    "ON CONFLICT (key, member) DO UPDATE SET value = excluded.value"
)
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
        now = time.time()
        conn.execute("DELETE FROM broker_state WHERE expires_at <= ?", (now,))
        conn.execute(
            "DELETE FROM broker_members WHERE key IN "
            "(SELECT key FROM broker_maps WHERE expires_at <= ?)",
            (now,),
        )
        conn.execute("DELETE FROM broker_maps WHERE expires_at <= ?", (now,))

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
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM broker_state WHERE key = ?", (key,))
            conn.execute("DELETE FROM broker_maps WHERE key = ?", (key,))
            conn.execute("DELETE FROM broker_members WHERE key = ?", (key,))
            conn.execute("COMMIT")

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
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            conn.execute(_SQLITE_UPSERT, (key, value, now + ttl))
            conn.execute(_SQLITE_CLEAR_DEAD_MEMBERS, (map_key, map_key, now))
            conn.execute(_SQLITE_UPSERT_MAP, (map_key, now + map_ttl))
            conn.execute(_SQLITE_UPSERT_MEMBER, (map_key, member, member_value))
            conn.execute("COMMIT")
            self._wrote(conn)

    def members(self, map_key: str) -> dict[str, bytes]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT m.member, m.value FROM broker_members AS m "
                "JOIN broker_maps AS p ON p.key = m.key "
                "WHERE m.key = ? AND p.expires_at > ?",
                (map_key, time.time()),
            ).fetchall()
        return {str(member): bytes(value) for member, value in rows}

    def remove_members(self, map_key: str, members: Sequence[str]) -> None:
        for member in members:
            _check_member(member)
        if not members:
            return
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "DELETE FROM broker_members WHERE key = ? AND member = ?",
                [(map_key, member) for member in members],
            )
            conn.execute("COMMIT")

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
