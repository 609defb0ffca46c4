"""SQLite: adding a session to a user's live index map costs the same however many sessions
the map already holds. Measured in SQLite virtual-machine steps (its progress handler),
which do not depend on the machine or its load."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from identity.sqlite_store import SqliteStore

STEP = 1  # the progress handler runs every this many VM instructions


class _CountingStore(SqliteStore):
    """The SQLite store, its connections counting the VM instructions they run."""

    steps = 0

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()

        def count() -> int:
            _CountingStore.steps += STEP
            return 0

        conn.set_progress_handler(count, STEP)
        return conn


def _steps_to_add(store: _CountingStore, map_key: str, member: str) -> int:
    _CountingStore.steps = 0
    store.set_and_add_member(
        f"session:{member}", b"record", 60, map_key, member=member, member_value=b"v", map_ttl=600
    )
    return _CountingStore.steps


def test_adding_to_a_live_map_does_not_visit_its_members(tmp_path: Path) -> None:
    store = _CountingStore(str(tmp_path / "state.db"))
    try:
        for i in range(10):
            _steps_to_add(store, "small", f"s{i}")
        for i in range(2000):
            _steps_to_add(store, "large", f"l{i}")
        small = _steps_to_add(store, "small", "one-more")
        large = _steps_to_add(store, "large", "one-more")
        # a B-tree of 2,000 members is a level or two deeper than one of 10: a few more
        # steps, not 2,000 rows' worth
        assert large < small * 1.5, (small, large)
        assert len(store.members("large")) == 2001
        assert len(store.members("small")) == 11
    finally:
        store.close()


def test_an_expired_map_starts_again_empty(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    try:
        store.set_and_add_member(
            "session:a", b"r", 60, "m", member="a", member_value=b"v", map_ttl=600
        )
        with sqlite3.connect(str(tmp_path / "state.db")) as raw:
            raw.execute("UPDATE broker_maps SET expires_at = 0 WHERE key = 'm'")
        assert store.members("m") == {}
        store.set_and_add_member(
            "session:b", b"r", 60, "m", member="b", member_value=b"w", map_ttl=600
        )
        assert store.members("m") == {"b": b"w"}
    finally:
        store.close()
