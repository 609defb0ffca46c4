"""The per-user session index: a new session and its index entry are one write to the store,
``sessions list`` shows what it lists, sessions listed by an older broker (one sealed list
per user) are still listed and ended, and brokers creating sessions of one user at once all
land. Real stores (memory, a SQLite file, redis-server), counted by a forwarding wrapper."""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from identity.config.document import build_config
from identity.revocation import IndexedSession, SessionIndexRecord
from identity.sealing import Sealer, token_hash
from identity.session_admin import list_user
from identity.sessions import TOKEN_PREFIX, SessionManager, SessionRecord
from identity.store import MemoryStore, Store, open_store
from service.cli import main
from tests.fixtures.apps import MakeApp, broker_config_dict
from tests.fixtures.configs import SECRET_KEY
from tests.fixtures.counting_store import CountingStore

CLIENT = "index-app"
LIFETIME = 3600


def config_dict(aws: Any, idp: Any, store_url: str) -> dict[str, Any]:
    return broker_config_dict(
        aws,
        store=store_url,
        service__session_lifetime=f"{LIFETIME}s",
        providers=[
            {
                "name": "corp",
                "kind": "oidc",
                "issuer": idp.issuer,
                "client_id": CLIENT,
                "exchange": "sts",
                "map": {"user_id": "corp-{sub}"},
            }
        ],
    )


def session_of(
    user: str, *, issuer: str = "https://idp.example", ago: float = 0, now: float | None = None
) -> SessionRecord:
    """A session of ``user`` created ``ago`` seconds before ``now`` (the clock's time)."""
    now = (time.time() if now is None else now) - ago
    return SessionRecord(
        provider="corp",
        user_id=f"corp-{user}",
        display_name=user.title(),
        tags={},
        issuer=issuer,
        subject=user,
        created_at=now,
        expires_at=now + LIFETIME,
    )


def create_the_old_way(store: Store, sealer: Sealer, record: SessionRecord) -> str:
    """A session as an older broker wrote it: the record, and the user's sealed list of
    sessions (``sessions-of:``), read-modify-written; its token."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session_hash = token_hash(token)
    ttl = record.expires_at - time.time()
    key = "session:" + session_hash
    store.set(key, sealer.seal(record.model_dump_json().encode(), context=key), ttl)
    index_key = "sessions-of:" + sealer.key_hash("sessions-of", record.provider, record.user_id)
    listed = IndexedSession(
        session_hash=session_hash, created_at=record.created_at, expires_at=record.expires_at
    )
    body = SessionIndexRecord(sessions=(listed,)).model_dump_json().encode()
    store.set(index_key, sealer.seal(body, context=index_key), ttl)
    return token


def map_key(sealer: Sealer, user_id: str, at: float) -> str:
    """The index map of ``user_id`` for the period of ``session_lifetime`` holding ``at``."""
    user_hash = sealer.key_hash("sessions-of", "corp", user_id)
    return f"session-index:{user_hash}:{math.floor(at / LIFETIME)}"


def listed_in_maps(
    store: Store, sealer: Sealer, user_id: str, now: float | None = None
) -> set[str]:
    """The members of the user's maps for the period holding ``now`` (the clock's time) and
    the one before."""
    now = time.time() if now is None else now
    keys = {map_key(sealer, user_id, now), map_key(sealer, user_id, now - LIFETIME)}
    return {member for key in keys for member in store.members(key)}


@pytest.fixture(params=["memory", "sqlite"])
def counted_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    inner: Store
    if request.param == "memory":
        inner = MemoryStore()
    else:
        inner = open_store(f"sqlite:///{tmp_path / 'index.db'}")
    yield CountingStore(inner)
    inner.close()


def test_a_new_session_is_one_write_and_is_listed_beside_an_older_brokers_session(
    make_app: MakeApp, aws: Any, oidc_provider: Any, counted_store: CountingStore
) -> None:
    config = build_config(config_dict(aws, oidc_provider, "memory://"))
    app = make_app(config, store=counted_store)
    broker = app.extensions["chime_broker"].broker
    legacy = create_the_old_way(
        counted_store.inner, broker.sealer, session_of("erin", issuer=oidc_provider.issuer, ago=60)
    )

    counted_store.calls.clear()
    token = broker.sessions.create(session_of("erin", issuer=oidc_provider.issuer))
    assert counted_store.calls == ["set_and_add_member"]
    assert broker.sessions.find(token) is not None

    listed = list_user(broker, "corp-erin")
    assert listed["count"] == 2
    assert [s["provider"] for s in listed["sessions"]] == ["corp", "corp"]
    assert list_user(broker, "corp-frank")["count"] == 0

    # Ending the older broker's session takes it out of its list; the new one stays.
    assert broker.sessions.end(legacy)
    assert list_user(broker, "corp-erin")["count"] == 1
    assert broker.sessions.end(token)
    assert list_user(broker, "corp-erin")["count"] == 0
    assert broker.sessions.index.live("corp", "corp-erin") == []


def test_sessions_list_shows_new_and_older_brokers_sessions(
    aws: Any, oidc_provider: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config_dict(aws, oidc_provider, url)))
    store = open_store(url)
    sealer = Sealer(SECRET_KEY)
    try:
        manager = SessionManager(store, sealer, session_lifetime=LIFETIME)
        create_the_old_way(store, sealer, session_of("gina", ago=120))
        manager.create(session_of("gina"))
        manager.create(session_of("hal"))
    finally:
        store.close()

    assert main(["sessions", "list", "--config", str(path), "--user", "corp-gina"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["count"] == 2
    first, second = listed["sessions"]
    assert first["created_at"] < second["created_at"]
    assert all(s["expires_at"].endswith("Z") for s in listed["sessions"])


def test_an_expired_entry_is_not_listed_and_leaves_the_index(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'index.db'}")
    sealer = Sealer(SECRET_KEY)
    # The middle of a period of session_lifetime: a minute later is in the same period, so
    # reading visits the map of the period before, which lists the expired session.
    now = (math.floor(time.time() / LIFETIME) + 0.5) * LIFETIME
    try:
        manager = SessionManager(store, sealer, session_lifetime=LIFETIME, clock=lambda: now)
        stale = manager.create(session_of("ivy", ago=LIFETIME - 30, now=now))
        fresh = manager.create(session_of("ivy", now=now))
        listed = listed_in_maps(store, sealer, "corp-ivy", now)
        assert listed == {token_hash(stale), token_hash(fresh)}

        # A minute later the first session has expired (the store keeps its record and
        # the map a little longer): it is not listed, and reading drops its entry.
        later = SessionManager(store, sealer, session_lifetime=LIFETIME, clock=lambda: now + 60)
        assert [s.session_hash for s in later.index.live("corp", "corp-ivy")] == [token_hash(fresh)]
        assert listed_in_maps(store, sealer, "corp-ivy", now + 60) == {token_hash(fresh)}
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


def test_sessions_of_one_user_created_at_once_on_two_brokers_are_all_listed(
    shared_url: str,
) -> None:
    stores = [open_store(shared_url), open_store(shared_url)]
    sealer = Sealer(SECRET_KEY)
    managers = [SessionManager(store, sealer, session_lifetime=LIFETIME) for store in stores]
    tokens: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def create(n: int) -> None:
        start.wait(timeout=30)
        tokens[n] = [managers[n].create(session_of("erin")) for _ in range(15)]

    threads = [threading.Thread(target=create, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        listed = {s.session_hash for s in managers[0].index.live("corp", "corp-erin")}
        assert listed == {token_hash(t) for t in tokens[0] + tokens[1]}
        for token in tokens[0]:
            assert managers[1].end(token)
        listed = {s.session_hash for s in managers[0].index.live("corp", "corp-erin")}
        assert listed == {token_hash(t) for t in tokens[1]}
        managers[1].index.clear("corp", "corp-erin")
        assert managers[0].index.live("corp", "corp-erin") == []
    finally:
        for store in stores:
            store.close()


def test_a_map_holds_one_periods_sessions_and_both_periods_are_listed(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'index.db'}")
    sealer = Sealer(SECRET_KEY)
    # the next boundary between two periods of session_lifetime, less than a lifetime away
    boundary = (math.floor(time.time() / LIFETIME) + 1) * LIFETIME

    def manager(at: float) -> SessionManager:
        return SessionManager(store, sealer, session_lifetime=LIFETIME, clock=lambda: at)

    def started(at: float) -> SessionRecord:
        return session_of("jo").model_copy(update={"created_at": at, "expires_at": at + LIFETIME})

    try:
        before = manager(boundary - 5).create(started(boundary - 10))
        after = manager(boundary + 5).create(started(boundary + 1))
        assert set(store.members(map_key(sealer, "corp-jo", boundary - 10))) == {token_hash(before)}
        assert set(store.members(map_key(sealer, "corp-jo", boundary + 1))) == {token_hash(after)}

        listed = manager(boundary + 5).index.live("corp", "corp-jo")
        assert [s.session_hash for s in listed] == [token_hash(before), token_hash(after)]
        # Ended in the later period, a session leaves the map of the period it began in.
        assert manager(boundary + 5).end(before)
        assert store.members(map_key(sealer, "corp-jo", boundary - 10)) == {}
        assert set(store.members(map_key(sealer, "corp-jo", boundary + 1))) == {token_hash(after)}
        # A lifetime on, the session of the earlier period has expired; the later one is
        # still found in what is now the previous period's map.
        listed = manager(boundary + LIFETIME - 5).index.live("corp", "corp-jo")
        assert [s.session_hash for s in listed] == [token_hash(after)]
    finally:
        store.close()
