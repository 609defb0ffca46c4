"""SQLite: the state table is a rowid table (its large rows appended, their keys in an
index), and a store file made with the earlier table, keyed by the row itself, keeps
working unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from identity.sqlite_store import SqliteStore

_EARLIER_STATE_TABLE = """CREATE TABLE broker_state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID"""


def _state_table(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'broker_state'"
        ).fetchone()
    conn.close()
    return str(row[0])


def _exercise(store: SqliteStore) -> None:
    store.set("a", b"1", 60)
    store.set("a", b"2", 60)  # the upsert's conflict on the key
    assert store.get("a") == b"2"
    assert store.get_many(["a", "missing", "a"]) == [b"2", None, b"2"]
    assert store.set_if_absent("b", b"x", 60)
    assert not store.set_if_absent("b", b"y", 60)
    assert store.replace("b", b"z", 60)
    assert store.compare_and_set("b", b"z", b"w", 60)
    store.set_and_add_member(
        "c", b"session", 60, "index", member="m", member_value=b"v", map_ttl=90
    )
    assert store.get("c") == b"session"
    assert store.members("index") == {"m": b"v"}
    assert store.get_and_delete("b") == b"w"
    assert store.get("b") is None
    store.set("gone", b"1", 0.001)
    store.set("d", b"1", 60)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE broker_state SET expires_at = 0 WHERE key = 'gone'")
    conn.close()
    assert store.get_many(["gone", "d"]) == [None, b"1"]


def test_a_new_store_keeps_its_state_in_a_rowid_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(str(path))
    try:
        _exercise(store)
    finally:
        store.close()
    assert "WITHOUT ROWID" not in _state_table(path).upper()


def test_a_store_made_with_the_earlier_table_works_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(_EARLIER_STATE_TABLE)
        conn.execute("INSERT INTO broker_state VALUES ('old', x'6f6c64', 9e12)")
    conn.close()
    store = SqliteStore(str(path))
    try:
        assert store.get("old") == b"old"
        _exercise(store)
    finally:
        store.close()
    assert _state_table(path) == _EARLIER_STATE_TABLE
