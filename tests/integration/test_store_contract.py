"""The state store contract, run against every backend: memory, a SQLite file, a real Redis,
a DynamoDB table in the moto server.

Races run 16 threads in one process and, for the backends shared between processes
(SQLite, Redis, DynamoDB), several new processes that each open the store from its URL.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import pytest
import redis

from identity.errors import StoreError
from identity.store import MemoryStore, Store, validate_store_url
from identity.store import open_store as _open_store
from service.demo.aws_world import REGION
from tests.fixtures.moto_server import AwsWorld

THREADS = 16
PROCESSES = 4
# Increments per racing process: enough that the processes' loops overlap.
PROCESS_INCREMENTS = 40
# Short enough to keep the suite quick, long enough that a loaded machine still
# performs the "before expiry" steps in time.
SHORT_TTL = 0.25
PAST_SHORT_TTL = 0.4


def open_store(url: str) -> Store:
    """The store at ``url``, in the region the moto server's world lives in (the broker
    passes its ``aws.region``; only DynamoDB uses it)."""
    return _open_store(url, region=REGION)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# Backends whose URL a fixture provides, by the server it starts.
_URL_FIXTURES = {"redis": "redis_url", "dynamodb": "dynamodb_store_url"}


@pytest.fixture(params=["memory", "sqlite", "redis", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return _sqlite_url(tmp_path / "state.db")
    url: str = request.getfixturevalue(_URL_FIXTURES[request.param])
    return url


@pytest.fixture(params=["sqlite", "redis", "dynamodb"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A backend that several processes can share."""
    if request.param == "sqlite":
        return _sqlite_url(tmp_path / "state.db")
    url: str = request.getfixturevalue(_URL_FIXTURES[request.param])
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


# --------------------------------------------------------------------------- basics


def test_get_set_and_overwrite(store: Store) -> None:
    assert store.get("greeting") is None
    store.set("greeting", b"hello", 30)
    assert store.get("greeting") == b"hello"
    store.set("greeting", b"goodbye", 30)
    assert store.get("greeting") == b"goodbye"


def test_keys_are_independent(store: Store) -> None:
    store.set("login:ab", b"1", 30)
    store.set("login:abc", b"2", 30)
    store.set("ключ/ü:*", b"3", 30)
    assert store.get("login:a") is None
    assert store.get("login:ab") == b"1"
    assert store.get("login:abc") == b"2"
    assert store.get("ключ/ü:*") == b"3"


def test_delete(store: Store) -> None:
    store.set("session", b"x", 30)
    store.delete("session")
    assert store.get("session") is None
    store.delete("session")
    store.delete("never-written")


def test_binary_values_round_trip(store: Store) -> None:
    every_byte = bytes(range(256))
    store.set("bytes", every_byte, 30)
    store.set("empty", b"", 30)
    assert store.get("bytes") == every_byte
    assert store.get("empty") == b""
    assert store.set_if_absent("bytes-once", every_byte[::-1], 30)
    assert store.get_and_delete("bytes-once") == every_byte[::-1]


def test_large_value_round_trips(store: Store) -> None:
    value = os.urandom(100 * 1024)
    store.set("large", value, 30)
    assert store.get("large") == value
    assert store.get_and_delete("large") == value


def test_ping_answers(store: Store) -> None:
    store.ping()


@pytest.mark.parametrize("ttl", [0, -1, -0.5, math.nan, math.inf, True])
def test_invalid_ttl_is_rejected(store: Store, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.set("k", b"v", ttl)
    with pytest.raises(ValueError, match="ttl"):
        store.set_if_absent("k", b"v", ttl)
    with pytest.raises(ValueError, match="ttl"):
        store.incr("k", ttl)
    assert store.get("k") is None


def test_non_bytes_value_is_rejected(store: Store) -> None:
    with pytest.raises(TypeError):
        store.set("k", "text", 30)  # type: ignore[arg-type]
    assert store.get("k") is None


# --------------------------------------------------------------------------- TTLs


def test_expired_keys_are_absent_everywhere(store: Store) -> None:
    for key in ("get", "take", "claim", "count"):
        store.set(key, b"41", SHORT_TTL)
    store.set("renewed", b"old", SHORT_TTL)
    store.set("renewed", b"new", 30)
    assert store.set_if_absent("first-claim", b"mine", SHORT_TTL)
    assert not store.set_if_absent("first-claim", b"theirs", 30)
    store.set("long", b"kept", 30)

    time.sleep(PAST_SHORT_TTL)

    assert store.get("get") is None
    assert store.get_and_delete("take") is None
    assert store.set_if_absent("claim", b"fresh", 30)
    assert store.get("claim") == b"fresh"
    assert store.incr("count", 30) == 1
    # set replaces the TTL; a refused set_if_absent leaves the old one in place
    assert store.get("renewed") == b"new"
    assert store.get("first-claim") is None
    assert store.get("long") == b"kept"


def test_set_if_absent_has_one_winner_until_the_key_goes(store: Store) -> None:
    assert store.set_if_absent("state", b"first", 30)
    assert not store.set_if_absent("state", b"second", 30)
    assert store.get("state") == b"first"
    store.delete("state")
    assert store.set_if_absent("state", b"third", 30)
    assert store.get_and_delete("state") == b"third"
    assert store.set_if_absent("state", b"fourth", 30)


def test_replace_writes_only_over_a_live_key(store: Store) -> None:
    assert not store.replace("session", b"revived", 30)
    assert store.get("session") is None
    store.set("session", b"first", 30)
    assert store.replace("session", b"second", 30)
    assert store.get("session") == b"second"
    store.delete("session")
    assert not store.replace("session", b"revived", 30)
    assert store.get("session") is None
    store.set("session", b"first", 30)
    assert store.get_and_delete("session") == b"first"
    assert not store.replace("session", b"revived", 30)
    assert store.get("session") is None


def test_replace_sets_the_new_ttl_and_never_revives_an_expired_key(store: Store) -> None:
    store.set("shortened", b"old", 30)
    assert store.replace("shortened", b"new", SHORT_TTL)
    store.set("expiring", b"old", SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert store.get("shortened") is None
    assert not store.replace("expiring", b"revived", 30)
    assert store.get("expiring") is None
    assert store.set_if_absent("expiring", b"fresh", 30)


def test_replace_validates_like_set(store: Store) -> None:
    store.set("k", b"v", 30)
    with pytest.raises(ValueError, match="ttl"):
        store.replace("k", b"w", 0)
    with pytest.raises(TypeError):
        store.replace("k", "text", 30)  # type: ignore[arg-type]
    assert store.get("k") == b"v"


def test_compare_and_set_writes_only_over_the_value_read(store: Store) -> None:
    assert not store.compare_and_set("index", b"read", b"new", 30)
    assert store.get("index") is None
    store.set("index", b"read", 30)
    assert not store.compare_and_set("index", b"other", b"new", 30)
    assert store.get("index") == b"read"
    assert store.compare_and_set("index", b"read", b"new", 30)
    assert store.get("index") == b"new"
    assert not store.compare_and_set("index", b"read", b"newer", 30)
    assert store.get("index") == b"new"
    store.set("expiring", b"read", SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert not store.compare_and_set("expiring", b"read", b"revived", 30)
    assert store.get("expiring") is None
    with pytest.raises(ValueError, match="ttl"):
        store.compare_and_set("index", b"new", b"w", 0)
    with pytest.raises(TypeError):
        store.compare_and_set("index", b"new", "text", 30)  # type: ignore[arg-type]
    assert store.get("index") == b"new"


def test_of_racing_compare_and_sets_from_one_read_exactly_one_wins(store: Store) -> None:
    for round_ in range(5):
        key = f"versioned-{round_}"
        store.set(key, b"v0", 30)
        wins = _race_threads(lambda i, key=key: store.compare_and_set(key, b"v0", b"%d" % i, 30))
        assert wins.count(True) == 1
        assert store.get(key) == b"%d" % wins.index(True)


def test_get_and_delete_is_single_use(store: Store) -> None:
    store.set("login-state", b"verifier", 30)
    assert store.get_and_delete("login-state") == b"verifier"
    assert store.get_and_delete("login-state") is None
    assert store.get("login-state") is None
    assert store.get_and_delete("never-written") is None


def test_incr_counts_and_reads_back_as_digits(store: Store) -> None:
    assert [store.incr("hits", 30) for _ in range(3)] == [1, 2, 3]
    assert store.get("hits") == b"3"
    assert store.incr("other", 30) == 1
    store.set("preset", b"41", 30)
    assert store.incr("preset", 30) == 42


def test_incr_ttl_is_not_extended_by_increments(store: Store) -> None:
    ttl = 0.6
    assert store.incr("window", ttl) == 1
    time.sleep(0.35)
    assert store.incr("window", ttl) == 2
    # 0.7 s after the counter was created: past its TTL even though the last
    # increment was only 0.35 s ago
    time.sleep(0.35)
    assert store.get("window") is None
    assert store.incr("window", ttl) == 1


def test_incr_on_a_non_integer_raises_store_error(store: Store) -> None:
    store.set("name", b"ada", 30)
    with pytest.raises(StoreError):
        store.incr("name", 30)
    assert store.get("name") == b"ada"


# --------------------------------------------------------------------------- member maps


def _add(store: Store, n: int, member: str, value: bytes, map_ttl: float = 30) -> None:
    """Write record ``rec-n`` and put ``member`` into the map ``map``."""
    store.set_and_add_member(f"rec-{n}", b"record-%d" % n, 30, "map", member, value, map_ttl)


def test_members_of_an_absent_map_are_none(store: Store) -> None:
    assert store.members("never-written") == {}
    store.remove_members("never-written", ["a"])
    store.delete("never-written")
    assert store.members("never-written") == {}


def test_set_and_add_member_writes_the_record_and_the_member(store: Store) -> None:
    _add(store, 1, "a1", b"first")
    _add(store, 2, "b2", b"second")
    assert store.get("rec-1") == b"record-1"
    assert store.get("rec-2") == b"record-2"
    assert store.members("map") == {"a1": b"first", "b2": b"second"}
    assert store.members("other-map") == {}


def test_adding_a_member_again_overwrites_its_value(store: Store) -> None:
    _add(store, 1, "a", b"old")
    _add(store, 2, "b", b"kept")
    _add(store, 3, "a", b"new")
    assert store.members("map") == {"a": b"new", "b": b"kept"}


def test_the_record_is_written_exactly_as_set_writes_it(store: Store) -> None:
    store.set("rec", b"overwritten", 30)
    store.set_and_add_member("rec", b"fresh", SHORT_TTL, "map", "m", b"x", 30)
    assert store.get("rec") == b"fresh"
    assert store.get_many(["rec"]) == [b"fresh"]
    assert store.replace("rec", b"replaced", SHORT_TTL)
    store.set_and_add_member("gone", b"v", SHORT_TTL, "map", "n", b"y", 30)
    time.sleep(PAST_SHORT_TTL)
    assert store.get("rec") is None
    assert store.get_and_delete("gone") is None
    assert store.members("map") == {"m": b"x", "n": b"y"}
    assert store.set_if_absent("rec", b"claimed", 30)


def test_member_values_round_trip_as_bytes(store: Store) -> None:
    every_byte = bytes(range(256))
    large = os.urandom(32 * 1024)
    store.set_and_add_member("r1", every_byte, 30, "map", "all", every_byte[::-1], 30)
    store.set_and_add_member("r2", b"", 30, "map", "empty", b"", 30)
    store.set_and_add_member("r3", b"x", 30, "map", "large", large, 30)
    store.set_and_add_member("r4", b"x", 30, "map", "A-z_09" * 20, b"\x00", 30)
    assert store.get("r1") == every_byte
    assert store.get("r2") == b""
    assert store.members("map") == {
        "all": every_byte[::-1],
        "empty": b"",
        "large": large,
        "A-z_09" * 20: b"\x00",
    }


def test_the_map_expires_map_ttl_after_the_last_add(store: Store) -> None:
    _add(store, 1, "early", b"1", map_ttl=SHORT_TTL)
    time.sleep(SHORT_TTL / 2)
    # a later add moves the whole map's expiry
    _add(store, 2, "late", b"2", map_ttl=SHORT_TTL)
    time.sleep(SHORT_TTL / 2 + 0.05)
    assert store.members("map") == {"early": b"1", "late": b"2"}
    time.sleep(PAST_SHORT_TTL)
    assert store.members("map") == {}
    # an add to an expired map starts an empty one
    _add(store, 3, "after", b"3")
    assert store.members("map") == {"after": b"3"}
    assert store.get("rec-3") == b"record-3"


def test_remove_members_leaves_the_others(store: Store) -> None:
    for n, member in enumerate(["a", "b", "c", "d"]):
        _add(store, n, member, member.encode())
    store.remove_members("map", ["b", "d", "never-added"])
    assert store.members("map") == {"a": b"a", "c": b"c"}
    store.remove_members("map", [])
    store.remove_members("map", ["a", "c"])
    assert store.members("map") == {}
    _add(store, 9, "e", b"e")
    assert store.members("map") == {"e": b"e"}


def test_delete_removes_a_map(store: Store) -> None:
    _add(store, 1, "a", b"a")
    _add(store, 2, "b", b"b")
    store.delete("map")
    assert store.members("map") == {}
    assert store.get("rec-1") == b"record-1"
    _add(store, 3, "c", b"c")
    assert store.members("map") == {"c": b"c"}


@pytest.mark.parametrize("member", ["", "has space", "dot.ted", "slash/", "x" * 129, "é"])
def test_members_outside_the_safe_alphabet_are_refused(store: Store, member: str) -> None:
    with pytest.raises(ValueError, match="member"):
        store.set_and_add_member("rec", b"v", 30, "map", member, b"x", 30)
    with pytest.raises(ValueError, match="member"):
        store.remove_members("map", [member])
    assert store.get("rec") is None
    assert store.members("map") == {}


def test_set_and_add_member_validates_like_set(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        store.set_and_add_member("rec", b"v", 0, "map", "m", b"x", 30)
    with pytest.raises(ValueError, match="ttl"):
        store.set_and_add_member("rec", b"v", 30, "map", "m", b"x", math.nan)
    with pytest.raises(TypeError):
        store.set_and_add_member("rec", "text", 30, "map", "m", b"x", 30)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.set_and_add_member("rec", b"v", 30, "map", "m", "text", 30)  # type: ignore[arg-type]
    assert store.get("rec") is None
    assert store.members("map") == {}


# --------------------------------------------------------------------------- thread races


def _race_threads(action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in THREADS threads released together; their results in order."""
    start = threading.Barrier(THREADS)

    def run(index: int) -> Any:
        start.wait(timeout=30)
        return action(index)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(run, range(THREADS)))


def _claim(store: Store, key: str, index: int) -> bool:
    return store.set_if_absent(key, b"%d" % index, 30)


def _take(store: Store, key: str, _index: int) -> bytes | None:
    return store.get_and_delete(key)


def test_set_if_absent_race_between_threads_has_one_winner(store: Store) -> None:
    for round_ in range(5):
        key = f"claim-{round_}"
        won = _race_threads(partial(_claim, store, key))
        assert won.count(True) == 1
        assert store.get(key) == b"%d" % won.index(True)


def test_get_and_delete_race_between_threads_has_one_taker(store: Store) -> None:
    for round_ in range(5):
        key = f"once-{round_}"
        store.set(key, b"the-value", 30)
        taken = _race_threads(partial(_take, store, key))
        assert taken.count(b"the-value") == 1
        assert taken.count(None) == THREADS - 1


def test_no_replace_revives_a_key_taken_in_a_race(store: Store) -> None:
    def replace_or_take(key: str, index: int) -> tuple[bool, bytes | None]:
        if index == 0:
            return True, store.get_and_delete(key)
        return store.replace(key, b"%d" % index, 30), None

    for round_ in range(5):
        key = f"ended-{round_}"
        store.set(key, b"original", 30)
        outcomes = _race_threads(partial(replace_or_take, key))
        written = {b"original"} | {b"%d" % i for i, (ok, _) in enumerate(outcomes) if i and ok}
        assert outcomes[0][1] in written
        assert store.get(key) is None
        assert not store.replace(key, b"late", 30)


def test_incr_from_many_threads_counts_exactly(store: Store) -> None:
    per_thread = 25
    counts = _race_threads(lambda _i: [store.incr("total", 30) for _ in range(per_thread)])
    seen = sorted(n for thread_counts in counts for n in thread_counts)
    assert seen == list(range(1, THREADS * per_thread + 1))
    assert store.get("total") == str(THREADS * per_thread).encode()


def test_adds_of_different_members_racing_on_one_map_all_land(store: Store) -> None:
    def add(index: int) -> None:
        store.set_and_add_member(
            f"session-{index}", b"record-%d" % index, 30, "index", f"s{index}", b"%d" % index, 30
        )

    _race_threads(add)
    assert store.members("index") == {f"s{i}": b"%d" % i for i in range(THREADS)}
    assert store.get_many([f"session-{i}" for i in range(THREADS)]) == [
        b"record-%d" % i for i in range(THREADS)
    ]


# --------------------------------------------------------------------------- process races
# Workers are new processes that each open the store from the URL themselves. They come
# from a fork server that has imported the stores once (a spawned interpreter would import
# them, boto3 and this module afresh for every worker); as the server keeps the
# environment it started with, each worker is given the SDK's variables of the moment.
_SDK_PREFIX = "AWS_"
_PRELOAD = [
    "identity.store",
    "identity.sqlite_store",
    "identity.redis_store",
    "identity.dynamodb_store",
    __name__,
]


@pytest.fixture(scope="module")
def racers() -> Iterator[Any]:
    """The fork server's context, its server stopped when the module's races are done."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    try:
        yield context
    finally:
        # the stop CPython's own tests use; the server would otherwise end with pytest
        forkserver._forkserver._stop()  # type: ignore[attr-defined]


def _worker(
    operation: str,
    url: str,
    key: str,
    index: int,
    start: Any,
    results: Any,
    sdk_environment: dict[str, str],
) -> None:
    try:
        for name in [n for n in os.environ if n.startswith(_SDK_PREFIX)]:
            del os.environ[name]
        os.environ.update(sdk_environment)
        store = open_store(url)
        try:
            start.wait(timeout=30)
            if operation == "set_if_absent":
                outcome: Any = store.set_if_absent(key, b"process-%d" % index, 30)
            elif operation == "get_and_delete":
                outcome = store.get_and_delete(key)
            else:
                outcome = [store.incr(key, 30) for _ in range(PROCESS_INCREMENTS)]
        finally:
            store.close()
        results.put((index, outcome))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((index, e))


def race_processes(ctx: Any, operation: str, url: str, key: str) -> list[Any]:
    """Run one operation in PROCESSES new processes released together; their outcomes in
    order. Fresh processes per race: one that hangs or dies cannot spoil the next."""
    start = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    sdk = {name: value for name, value in os.environ.items() if name.startswith(_SDK_PREFIX)}
    processes = [
        ctx.Process(target=_worker, args=(operation, url, key, i, start, results, sdk))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, Any] = {}
    try:
        for _ in processes:
            index, outcome = results.get(timeout=60)
            outcomes[index] = outcome
    except queue.Empty:
        pytest.fail(f"only {len(outcomes)} of {PROCESSES} processes reported")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    errors = [o for o in outcomes.values() if isinstance(o, BaseException)]
    assert not errors, errors
    assert all(process.exitcode == 0 for process in processes)
    return [outcomes[i] for i in range(PROCESSES)]


@pytest.mark.slow
def test_set_if_absent_race_between_processes_has_one_winner(
    racers: Any, shared_store_url: str
) -> None:
    won = race_processes(racers, "set_if_absent", shared_store_url, "claim")
    assert won.count(True) == 1
    store = open_store(shared_store_url)
    try:
        assert store.get("claim") == b"process-%d" % won.index(True)
    finally:
        store.close()


@pytest.mark.slow
def test_get_and_delete_race_between_processes_has_one_taker(
    racers: Any, shared_store_url: str
) -> None:
    store = open_store(shared_store_url)
    try:
        store.set("once", b"the-value", 30)
        taken = race_processes(racers, "get_and_delete", shared_store_url, "once")
        assert taken.count(b"the-value") == 1
        assert taken.count(None) == PROCESSES - 1
        assert store.get("once") is None
    finally:
        store.close()


@pytest.mark.slow
def test_incr_from_many_processes_counts_exactly(racers: Any, shared_store_url: str) -> None:
    counts = race_processes(racers, "incr", shared_store_url, "total")
    seen = sorted(n for process_counts in counts for n in process_counts)
    assert seen == list(range(1, PROCESSES * PROCESS_INCREMENTS + 1))


# --------------------------------------------------------------------------- sqlite


def test_sqlite_file_is_in_wal_mode_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(_sqlite_url(path))
    try:
        store.set("k", b"v", 30)
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        store.close()


def test_sqlite_relative_and_absolute_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    relative = open_store("sqlite:///var/relative.db")
    absolute_url = "sqlite:///" + str(tmp_path / "absolute.db")
    assert absolute_url.startswith("sqlite:////")
    absolute = open_store(absolute_url)
    try:
        relative.set("where", b"relative", 30)
        absolute.set("where", b"absolute", 30)
        assert relative.get("where") == b"relative"
        assert absolute.get("where") == b"absolute"
        assert (tmp_path / "var" / "relative.db").is_file()
        assert (tmp_path / "absolute.db").is_file()
    finally:
        relative.close()
        absolute.close()


def test_sqlite_stores_on_one_file_share_state(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path / "state.db")
    one, two = open_store(url), open_store(url)
    try:
        one.set("shared", b"yes", 30)
        assert two.get_and_delete("shared") == b"yes"
        assert one.get("shared") is None
    finally:
        one.close()
        two.close()


def test_sqlite_purges_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(_sqlite_url(path))
    try:
        for i in range(300):
            store.set(f"old-{i}", b"x", 0.05)
        time.sleep(0.1)
        for i in range(300):
            store.set(f"new-{i}", b"x", 30)
        with sqlite3.connect(path) as raw:
            (rows,) = raw.execute("SELECT count(*) FROM broker_state").fetchone()
        assert rows < 600
    finally:
        store.close()


def test_sqlite_purges_expired_maps_and_their_members(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(_sqlite_url(path))
    try:
        for i in range(300):
            store.set_and_add_member(f"old-{i}", b"x", 0.05, f"map-{i % 3}", f"m{i}", b"x", 0.05)
        time.sleep(0.1)
        for i in range(300):
            store.set(f"new-{i}", b"x", 30)
        with sqlite3.connect(path) as raw:
            (maps,) = raw.execute("SELECT count(*) FROM broker_maps").fetchone()
            (members,) = raw.execute("SELECT count(*) FROM broker_members").fetchone()
        assert (maps, members) == (0, 0)
    finally:
        store.close()


def test_sqlite_delete_clears_the_members_of_a_map(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(_sqlite_url(path))
    try:
        store.set_and_add_member("rec", b"x", 30, "map", "a", b"1", 30)
        store.delete("map")
        with sqlite3.connect(path) as raw:
            assert raw.execute("SELECT count(*) FROM broker_members").fetchone() == (0,)
    finally:
        store.close()


def _open_files(path: Path) -> int:
    """How many descriptors of this process point at ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path))


def _incr_in_forked_child(store: Store, path: Path, results: Any) -> None:
    try:
        before = _open_files(path)
        counts = [store.incr("forked", 30) for _ in range(100)]
        results.put((counts, _open_files(path) - before))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(e)


def test_sqlite_store_keeps_working_across_fork(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(_sqlite_url(path))
    try:
        # The parent has a pooled connection before the fork; children must open their own.
        assert store.incr("forked", 30) == 1
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        children = [
            ctx.Process(target=_incr_in_forked_child, args=(store, path, results)) for _ in range(3)
        ]
        for child in children:
            child.start()
        parent_counts = [store.incr("forked", 30) for _ in range(100)]
        reports = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(timeout=30)
        assert not [r for r in reports if isinstance(r, BaseException)], reports
        assert all(newly_opened > 0 for _, newly_opened in reports)
        seen = sorted([1, *parent_counts, *(n for counts, _ in reports for n in counts)])
        assert seen == list(range(1, 402))
        assert store.get("forked") == b"401"
    finally:
        store.close()


def test_sqlite_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        open_store(_sqlite_url(tmp_path / "missing-dir" / "state.db"))


# --------------------------------------------------------------------------- memory


def test_memory_store_purges_expired_entries() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    for i in range(5000):
        store.set(f"old-{i}", b"x", 0.05)
    time.sleep(0.1)
    for i in range(5000):
        store.set(f"new-{i}", b"x", 30)
    assert len(store) < 10000
    assert all(store.get(f"new-{i}") == b"x" for i in range(5000))


# --------------------------------------------------------------------------- redis


def test_redis_keys_carry_the_broker_prefix(redis_url: str) -> None:
    store = open_store(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.set("session:1", b"v", 30)
        store.incr("hits", 30)
        assert sorted(raw.keys("*")) == [b"chime-broker:hits", b"chime-broker:session:1"]
        assert 0 < raw.pttl("chime-broker:hits") <= 30_000
    finally:
        raw.close()
        store.close()


def test_redis_map_is_a_prefixed_hash_with_a_ttl(redis_url: str) -> None:
    store = open_store(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.set_and_add_member("session:1", b"v", 30, "index:u", "s1", b"e1", 60)
        assert sorted(raw.keys("*")) == [b"chime-broker:index:u", b"chime-broker:session:1"]
        assert raw.type("chime-broker:index:u") == b"hash"
        assert raw.hgetall("chime-broker:index:u") == {b"s1": b"e1"}
        assert 30_000 < raw.pttl("chime-broker:index:u") <= 60_000
        assert 0 < raw.pttl("chime-broker:session:1") <= 30_000
    finally:
        raw.close()
        store.close()


def test_unreachable_redis_raises_store_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed again: nothing listens there.
    store = open_store(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(StoreError):
            store.ping()
        with pytest.raises(StoreError):
            store.get("k")
    finally:
        store.close()


# --------------------------------------------------------------------------- dynamodb


def test_dynamodb_map_is_one_item_written_with_the_record_in_one_transaction(
    dynamodb_store_url: str, aws: AwsWorld
) -> None:
    store = open_store(dynamodb_store_url)
    table = dynamodb_store_url.removeprefix("dynamodb://")
    raw = aws.client("dynamodb")
    try:
        aws.recorder.reset()
        store.set_and_add_member("session:1", b"v", 30, "index:u", "s1", b"e1", 60)
        assert aws.recorder.operations() == ["TransactWriteItems"]
        (call,) = aws.recorder.calls("TransactWriteItems")
        put, update = call["TransactItems"]
        assert put["Put"]["Item"]["pk"] == {"S": "session:1"}
        assert update["Update"]["Key"] == {"pk": {"S": "index:u"}}
        assert update["Update"]["UpdateExpression"] == "SET #m = :m, #exp = :exp, #ttl = :ttl"
        item = raw.get_item(TableName=table, Key={"pk": {"S": "index:u"}})["Item"]
        assert item["m_s1"] == {"B": b"e1"}
        assert time.time() + 30 < float(item["exp"]["N"]) <= int(item["expires_at"]["N"])
    finally:
        store.close()


def test_dynamodb_map_expired_but_not_yet_deleted_is_empty(
    dynamodb_store_url: str, aws: AwsWorld
) -> None:
    store = open_store(dynamodb_store_url)
    table = dynamodb_store_url.removeprefix("dynamodb://")
    past = time.time() - 60
    aws.client("dynamodb").put_item(
        TableName=table,
        Item={
            "pk": {"S": "index:u"},
            "m_old": {"B": b"stale"},
            "exp": {"N": repr(past)},
            "expires_at": {"N": str(math.ceil(past))},
        },
    )
    try:
        assert store.members("index:u") == {}
        store.set_and_add_member("session:2", b"v", 30, "index:u", "new", b"fresh", 60)
        assert store.members("index:u") == {"new": b"fresh"}
        assert store.get("session:2") == b"v"
    finally:
        store.close()


# --------------------------------------------------------------------------- URLs


def test_unknown_scheme_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'postgres'"):
        open_store("postgres://db.example/state")
    with pytest.raises(ValueError, match="scheme"):
        open_store("/var/lib/state.db")


@pytest.mark.parametrize(
    "url",
    [
        "memory://extra",
        "sqlite://host/state.db",
        "sqlite:///",
        "sqlite:///dir/",
        "sqlite:///state.db?mode=ro",
        "redis://",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/0?decode_responses=true",
    ],
)
def test_malformed_urls_are_value_errors(url: str) -> None:
    with pytest.raises(ValueError):
        validate_store_url(url)
    with pytest.raises(ValueError):
        open_store(url)


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///broker-state.db",
        "sqlite:////var/lib/chime-broker/state.db",
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@redis.example:6380/2",
    ],
)
def test_well_formed_urls_validate(url: str) -> None:
    validate_store_url(url)
