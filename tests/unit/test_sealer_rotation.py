"""A ``Sealer`` with several secrets: the first seals and derives store keys, every one
opens; and what is keyed by such hashes (login transactions, native codes) is still found
after a rotation."""

from __future__ import annotations

import secrets
import time

import pytest

from identity import errors
from identity.logins import LoginTransaction, LoginTransactions, NativeCodes, NativeHandoff, s256
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


def test_a_login_begun_before_the_rotation_finishes_after_it() -> None:
    store = MemoryStore()
    before = LoginTransactions(store, Sealer(OLD))
    pre_login = secrets.token_urlsafe(16)
    now = time.time()
    transaction = LoginTransaction(
        provider="corp",
        return_to="https://app.example/",
        binding=before.binding(pre_login),
        created_at=now,
    )
    state = before.begin(transaction)

    after = LoginTransactions(store, Sealer([NEW, OLD]))
    assert after.pending(state)
    taken = after.take(state, provider="corp", binding=after.bindings(pre_login), now=now)

    assert taken.return_to == "https://app.example/"
    assert not after.pending(state)


def test_a_login_from_another_browser_is_still_refused_after_the_rotation() -> None:
    store = MemoryStore()
    before = LoginTransactions(store, Sealer(OLD))
    now = time.time()
    transaction = LoginTransaction(
        provider="corp",
        return_to="https://app.example/",
        binding=before.binding("mine"),
        created_at=now,
    )
    state = before.begin(transaction)
    after = LoginTransactions(store, Sealer([NEW, OLD]))

    with pytest.raises(errors.InvalidRequest, match="another browser"):
        after.take(state, provider="corp", binding=after.bindings("theirs"), now=now)


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
