"""A ``Sealer`` with several secrets: the first seals and derives store keys, every one
opens; and what is sealed or tagged under an older one (login transactions in their
pre-login cookies, native codes in the store) is still usable after a rotation."""

from __future__ import annotations

import secrets
import time

import pytest

from identity import errors
from identity.login_transactions import LoginTransaction, LoginTransactions
from identity.logins import NativeCodes, NativeHandoff, s256
from identity.models import Principal
from identity.sealing import Sealer
from identity.store import MemoryStore

OLD = "old-secret-key-0123456789abcdefghijklmnop"
NEW = "new-secret-key-0123456789abcdefghijklmnop"


def test_the_first_secret_seals_and_every_secret_opens() -> None:
    rotated = Sealer([NEW, OLD])
    sealed_before = Sealer(OLD).seal(b"before", context="k")
    sealed_after = rotated.seal(b"after", context="k")

    assert rotated.open(sealed_before, context="k") == b"before"
    assert rotated.open(sealed_after, context="k") == b"after"
    assert Sealer(NEW).open(sealed_after, context="k") == b"after"
    assert Sealer(OLD).open(sealed_after, context="k") is None
    assert Sealer(NEW).open(sealed_before, context="k") is None
    assert rotated.open(sealed_before, context="other") is None


def test_store_keys_come_from_the_first_secret_and_each_one_is_listed() -> None:
    rotated = Sealer([NEW, OLD])

    assert rotated.key_hash("a", "b") == Sealer(NEW).key_hash("a", "b")
    assert rotated.key_hashes("a", "b") == [
        Sealer(NEW).key_hash("a", "b"),
        Sealer(OLD).key_hash("a", "b"),
    ]
    assert Sealer(OLD).key_hashes("a", "b") == [Sealer(OLD).key_hash("a", "b")]


def test_a_sealer_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        Sealer([])


def begun(transactions: LoginTransactions, now: float) -> tuple[str, dict[str, str]]:
    """A login begun with ``transactions``: its state and the browser's pre-login cookies."""
    state = transactions.new_state(now)
    cookie = transactions.seal(
        LoginTransaction(
            state=state, provider="corp", return_to="https://app.example/", created_at=now
        )
    )
    assert cookie.value is not None
    return state, {cookie.slot: cookie.value}


def test_a_login_begun_before_the_rotation_finishes_after_it() -> None:
    store = MemoryStore()
    now = time.time()
    state, in_flight = begun(LoginTransactions(store, Sealer(OLD)), now)

    after = LoginTransactions(store, Sealer([NEW, OLD]))
    assert after.pending(state, now=now)
    taken = after.take(state, provider="corp", in_flight=in_flight, now=now)

    assert taken.return_to == "https://app.example/"
    assert not after.pending(state, now=now)
    # Spent under a key no secret changes: neither broker takes it again.
    for broker in (after, LoginTransactions(store, Sealer(OLD))):
        with pytest.raises(errors.InvalidRequest, match="unknown, used or expired"):
            broker.take(state, provider="corp", in_flight=in_flight, now=now)


def test_a_login_from_another_browser_is_still_refused_after_the_rotation() -> None:
    store = MemoryStore()
    before = LoginTransactions(store, Sealer(OLD))
    now = time.time()
    state, _ = begun(before, now)
    _, theirs = begun(before, now)
    after = LoginTransactions(store, Sealer([NEW, OLD]))

    with pytest.raises(errors.InvalidRequest, match="another browser"):
        after.take(state, provider="corp", in_flight=theirs, now=now)
    assert len(store) == 0


def test_a_login_begun_under_a_retired_secret_is_stale() -> None:
    store = MemoryStore()
    now = time.time()
    state, in_flight = begun(LoginTransactions(store, Sealer(OLD)), now)
    retired = LoginTransactions(store, Sealer(NEW))

    assert not retired.pending(state, now=now)
    with pytest.raises(errors.InvalidRequest, match="unknown, used or expired"):
        retired.take(state, provider="corp", in_flight=in_flight, now=now)


def test_a_native_code_issued_before_the_rotation_is_redeemed_once_after_it() -> None:
    store = MemoryStore()
    verifier = secrets.token_urlsafe(48)
    now = time.time()
    handoff = NativeHandoff(
        provider="corp",
        principal=Principal(provider="corp", issuer="https://idp.example", subject="alice"),
        code_challenge=s256(verifier),
        created_at=now,
    )
    code = NativeCodes(store, Sealer(OLD)).issue(handoff)
    after = NativeCodes(store, Sealer([NEW, OLD]))

    assert after.redeem("corp", code, verifier, now=now).principal.subject == "alice"
    with pytest.raises(errors.InvalidRequest):
        after.redeem("corp", code, verifier, now=now)
