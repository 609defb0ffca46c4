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
from typing import Any

from identity.errors import StoreError
from identity.store_values import check_member as _check_member
from identity.store_values import check_member_write
from identity.store_values import check_ttl as _check_ttl
from identity.store_values import check_value as _check_value
from identity.store_values import counter_value as _counter_value

__all__ = ["SQLITE_BUSY_TIMEOUT", "SqliteStore"]

_SQLITE_SCHEMA = (
    # A rowid table: its rows (sealed sessions of a kilobyte or so) are appended at its end
    # and their keys filed in a small index, where a table keyed by those random hashes
    # would put each new row in a random page of large rows and split one, dirtying more
    # pages for the WAL at every new session (SQLite advises WITHOUT ROWID for rows under
    # a twentieth of a page). A store made before keeps its table, which works the same.
    """CREATE TABLE IF NOT EXISTS broker_state (
        key TEXT NOT NULL PRIMARY KEY,
        value BLOB NOT NULL,
        expires_at REAL NOT NULL
    )""",
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
_SQLITE_MAP_EXPIRES_AT = "SELECT expires_at FROM broker_maps WHERE key = ?"
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
# How a writer waits for that lock: first it tries again after each os.sched_yield (the CPU
# to the process holding the lock, which keeps it for a quarter of a millisecond or so) for
# up to _SQLITE_SPIN seconds, then after sleeps of _SQLITE_FIRST_WAIT doubling up to
# _SQLITE_LONGEST_WAIT (under gevent, a yield to the worker's other requests for that long).
_SQLITE_SPIN = 0.001
_SQLITE_FIRST_WAIT = 0.0001
_SQLITE_LONGEST_WAIT = 0.002
# Every this many writes, the writer also deletes all expired rows (indexed).
_SQLITE_PURGE_EVERY = 256
# Idle connections kept for reuse; more are closed when handed back.
_SQLITE_MAX_IDLE = 32

# Connections inherited across fork: the child must neither use nor close them
# (closing drops the child's POSIX locks on the file), so they are kept referenced.
_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (SQLITE_BUSY, or
    SQLITE_LOCKED within one process), with any extended code."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteStore:
    """``sqlite://``: one WAL-mode file shared by every thread and process on the machine.

    Each operation borrows a connection that no other thread uses meanwhile; the pool
    belongs to the process that made it, so a forked child opens its own connections.
    Times are wall-clock (``time.time``) because several processes compare them. A write
    waits ``busy_timeout`` seconds for another's lock, then fails as StoreError.

    The wait is the store's own, not SQLite's busy handler: that one sleeps inside the
    library, a millisecond at first while the other writer needs a quarter of that, and in
    a gevent worker a sleep inside a library stops every request the worker is serving.
    Here a writer that finds the lock taken first hands the CPU to the holder and tries
    again, for a millisecond; then it sleeps with ``time.sleep``, which gevent makes
    a yield to the worker's other requests. (Only yielding would keep the worker busy, but
    in a busy worker a yield lasts as long as every other ready request's turn: the few
    writers that must wait several times would wait far longer than the rest.)
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
                self._execute(conn, statement)
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
            # from here on a busy lock is reported at once and waited for by _execute
            conn.execute("PRAGMA busy_timeout=0")
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

    def _take(self) -> sqlite3.Connection:
        try:
            return self._checkout()
        except (sqlite3.Error, OSError) as e:
            raise self._error(e) from e

    def _give_back(self, conn: sqlite3.Connection) -> None:
        try:
            self._checkin(conn)
        except sqlite3.Error:
            self._discard(conn)

    def _error(self, error: Exception) -> StoreError:
        return StoreError(f"sqlite store {self._path}: {error}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._take()
        try:
            yield conn
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            self._give_back(conn)

    def _read(self, sql: str, params: Sequence[object]) -> list[Any]:
        """The rows of one query, as ``_connection`` would run it but without its generator
        (reads are most of the store's calls: a refresh makes two)."""
        conn = self._take()
        try:
            return self._execute(conn, sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from e
        finally:
            self._give_back(conn)

    def _execute(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()
    ) -> sqlite3.Cursor:
        """``conn.execute``, waiting (as the class says) while another connection holds the
        lock it needs. A statement refused as busy has done nothing, so it is simply run
        again; inside a transaction, which already holds the write lock, it never is."""
        try:
            return conn.execute(sql, params)
        except sqlite3.OperationalError as e:
            if not _busy(e) or conn.in_transaction:
                raise
        started = time.monotonic()
        deadline = started + self._busy_timeout
        spin_until = started + _SQLITE_SPIN
        wait = 0.0
        while True:
            if time.monotonic() < spin_until:
                os.sched_yield()
            else:
                time.sleep(wait)
                wait = min(_SQLITE_LONGEST_WAIT, wait * 2 or _SQLITE_FIRST_WAIT)
            try:
                return conn.execute(sql, params)
            except sqlite3.OperationalError as e:
                if not _busy(e) or conn.in_transaction or time.monotonic() >= deadline:
                    raise

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
            if conn in self._idle:
                self._idle.remove(conn)
        conn.close()

    def _purge(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        self._execute(conn, "DELETE FROM broker_state WHERE expires_at <= ?", (now,))
        self._execute(
            conn,
            "DELETE FROM broker_members WHERE key IN "
            "(SELECT key FROM broker_maps WHERE expires_at <= ?)",
            (now,),
        )
        self._execute(conn, "DELETE FROM broker_maps WHERE expires_at <= ?", (now,))

    def _wrote(self, conn: sqlite3.Connection) -> None:
        if next(self._writes) % _SQLITE_PURGE_EVERY == 0:
            self._purge(conn)

    def get(self, key: str) -> bytes | None:
        rows = self._read(
            "SELECT value FROM broker_state WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        return bytes(rows[0][0]) if rows else None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        wanted = list(dict.fromkeys(keys))
        marks = ",".join("?" * len(wanted))
        rows = self._read(
            f"SELECT key, value FROM broker_state WHERE key IN ({marks}) AND expires_at > ?",  # noqa: S608 (placeholders only)
            (*wanted, time.time()),
        )
        found = {key: bytes(value) for key, value in rows}
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        _check_value(value)
        _check_ttl(ttl)
        with self._connection() as conn:
            self._execute(conn, _SQLITE_UPSERT, (key, value, time.time() + ttl))
            self._wrote(conn)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._connection() as conn:
            now = time.time()
            # fetchall: the statement (and its write lock) ends only when fully stepped.
            written = self._execute(conn, _SQLITE_INSERT_IF_ABSENT, (key, value, now + ttl, now))
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
                cursor = self._execute(conn, _SQLITE_UPDATE_LIVE, (value, now + ttl, key, now))
            else:
                cursor = self._execute(
                    conn, _SQLITE_UPDATE_LIVE_SAME, (value, now + ttl, key, expected, now)
                )
            updated = cursor.rowcount
            self._wrote(conn)
        return bool(updated == 1)

    def get_and_delete(self, key: str) -> bytes | None:
        with self._connection() as conn:
            rows = self._execute(
                conn, "DELETE FROM broker_state WHERE key = ? RETURNING value, expires_at", (key,)
            ).fetchall()
        if not rows or rows[0][1] <= time.time():
            return None
        return bytes(rows[0][0])

    def delete(self, key: str) -> None:
        with self._connection() as conn:
            self._execute(conn, "BEGIN IMMEDIATE")
            self._execute(conn, "DELETE FROM broker_state WHERE key = ?", (key,))
            self._execute(conn, "DELETE FROM broker_maps WHERE key = ?", (key,))
            self._execute(conn, "DELETE FROM broker_members WHERE key = ?", (key,))
            self._execute(conn, "COMMIT")

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
            self._execute(conn, "BEGIN IMMEDIATE")
            now = time.time()
            self._execute(conn, _SQLITE_UPSERT, (key, value, now + ttl))
            # A map that has expired (or was never written) starts again empty. Checked
            # first: a DELETE conditioned on the map's expiry would visit every member of a
            # live map (SQLite evaluates a subquery's condition per row), at each new session.
            row = self._execute(conn, _SQLITE_MAP_EXPIRES_AT, (map_key,)).fetchone()
            if row is None or row[0] <= now:
                self._execute(conn, "DELETE FROM broker_members WHERE key = ?", (map_key,))
            self._execute(conn, _SQLITE_UPSERT_MAP, (map_key, now + map_ttl))
            self._execute(conn, _SQLITE_UPSERT_MEMBER, (map_key, member, member_value))
            self._execute(conn, "COMMIT")
            self._wrote(conn)

    def members(self, map_key: str) -> dict[str, bytes]:
        with self._connection() as conn:
            rows = self._execute(
                conn,
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
            self._execute(conn, "BEGIN IMMEDIATE")
            conn.executemany(
                "DELETE FROM broker_members WHERE key = ? AND member = ?",
                [(map_key, member) for member in members],
            )
            self._execute(conn, "COMMIT")

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._connection() as conn:
            self._execute(conn, "BEGIN IMMEDIATE")
            now = time.time()
            row = self._execute(
                conn, "SELECT value, expires_at FROM broker_state WHERE key = ?", (key,)
            ).fetchone()
            if row is None or row[1] <= now:
                count, expires_at = 1, now + ttl
            else:
                count, expires_at = _counter_value(key, bytes(row[0])) + 1, row[1]
            self._execute(conn, _SQLITE_UPSERT, (key, str(count).encode("ascii"), expires_at))
            self._execute(conn, "COMMIT")
            self._wrote(conn)
        return count

    def ping(self) -> None:
        with self._connection() as conn:
            self._execute(conn, "SELECT 1 FROM broker_state LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            mine = self._connections if self._pid == os.getpid() else []
            self._connections, self._idle = [], []
        for conn in mine:
            conn.close()
