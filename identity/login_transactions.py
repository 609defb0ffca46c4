"""Login transactions in the browser: each browser login in flight is one pre-login cookie
holding its transaction, sealed, so that starting a login writes nothing to the store.

A transaction (``state``, provider, ``return_to``, the native app's code challenge, when it
began, and the protocol's secrets: OIDC nonce and PKCE verifier, or the SAML AuthnRequest
id) is sealed under ``service.secret_key`` and bound to its cookie's name, which ``state``
gives. ``state`` carries a keyed tag and the second it was issued, so an answer can be told
apart from a forgery, and a late one, without the store. The answer spends the transaction
once, in the store's replay cache, for the rest of its ``LOGIN_TTL`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import Field, TypeAdapter

from identity import errors
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.store import Store

LOGIN_TTL: Final = 600
# Pre-login cookies a browser keeps at once (a fifth login in flight drops the oldest);
# with return_to bounded, each (name and value) stays under 1.4 KB, all under 5.5 KB.
MAX_LOGINS_IN_FLIGHT: Final = 4
_SPENT_KEY: Final = "login-spent:"
# A state is 16 random bytes, the issuing second (mod 2**32) and a 12-byte keyed tag:
# 43 characters, which fit SAML's 80-byte RelayState.
_STATE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_STATE_RANDOM: Final = 16
_STATE_TAG: Final = 12
_SECONDS: Final = 2**32


class LoginTransaction(StoredRecord):
    """One browser login in flight, as its pre-login cookie holds it. An OIDC login keeps
    ``nonce`` and ``code_verifier``, a SAML login ``saml_request_id``."""

    v: Literal[1] = 1
    state: str = Field(repr=False)
    provider: str
    return_to: str
    created_at: float
    nonce: str = Field(default="", repr=False)
    code_verifier: str = Field(default="", repr=False)
    native_challenge: str | None = None
    saml_request_id: str | None = Field(default=None, repr=False)


_TRANSACTION: Final = TypeAdapter(LoginTransaction)


@dataclass(frozen=True)
class PreLoginCookie:
    """A change to one of the browser's pre-login cookies: ``slot`` names the cookie (one
    per login in flight), ``value`` is the sealed transaction to set, or None to remove it."""

    slot: str
    value: str | None = field(default=None, repr=False)


SignInProblem = Literal["no_state", "unknown", "used", "expired", "other_browser", "other_provider"]


class SignInNotUsable(errors.InvalidRequest):
    """An answer that names no live sign-in of this browser and provider (``invalid_request``);
    ``reason`` says which, for the page a person sees."""

    def __init__(
        self, detail: str, *, reason: SignInProblem, log_detail: str | None = None
    ) -> None:
        super().__init__(detail, log_detail=log_detail)
        self.reason: SignInProblem = reason


class TransactionNotSpent(Exception):
    """The store failed while spending a live transaction of this browser: the sign-in goes
    back to the transaction's ``return_to`` with the store's error."""

    def __init__(self, transaction: LoginTransaction, error: errors.StoreError) -> None:
        super().__init__(str(error))
        self.transaction = transaction
        self.error = error


class LoginTransactions:
    """Login transactions sealed for the browser's pre-login cookies, each spent at most
    once in the store's replay cache."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    def new_state(self, now: float) -> str:
        """A fresh ``state``: random, stamped with ``now``, tagged under the newest secret."""
        body = secrets.token_bytes(_STATE_RANDOM) + (int(now) % _SECONDS).to_bytes(4, "big")
        return _b64(body + self._tags(body)[0])

    def slot(self, state: str) -> str:
        """The name of ``state``'s pre-login cookie (below the cookie's base name)."""
        return _b64(hashlib.sha256(state.encode()).digest()[:12])

    def seal(self, transaction: LoginTransaction) -> PreLoginCookie:
        """The pre-login cookie that holds ``transaction``."""
        slot = self.slot(transaction.state)
        sealed = self._sealer.seal(_TRANSACTION.dump_json(transaction), context=_context(slot))
        return PreLoginCookie(slot, _b64(sealed))

    def spent(self, state: str) -> PreLoginCookie:
        """The removal of ``state``'s pre-login cookie once its transaction is spent."""
        return PreLoginCookie(self.slot(state))

    def pruned(self, in_flight: Mapping[str, str], *, now: float) -> list[PreLoginCookie]:
        """Removals that leave room for one more login among the browser's ``in_flight``
        cookies (by slot): unreadable and expired ones, and the oldest beyond the bound."""
        live: list[tuple[float, str]] = []
        removed: list[PreLoginCookie] = []
        for slot, value in in_flight.items():
            transaction = self._open(slot, value)
            if transaction is None or now - transaction.created_at > LOGIN_TTL:
                removed.append(PreLoginCookie(slot))
            else:
                live.append((transaction.created_at, slot))
        live.sort(reverse=True)
        removed.extend(PreLoginCookie(slot) for _, slot in live[MAX_LOGINS_IN_FLIGHT - 1 :])
        return removed

    def pending(self, state: str | None, *, now: float) -> bool:
        """Whether ``state`` names a transaction issued here (in any browser) that is
        neither expired nor spent."""
        if state is None:
            return False
        issued = self._issued(state)
        return issued is not None and not _late(issued, now) and not self._was_spent(state)

    def take(
        self, state: str | None, *, provider: str, in_flight: Mapping[str, str], now: float
    ) -> LoginTransaction:
        """The transaction of ``state`` from the browser's ``in_flight`` pre-login cookies
        (by slot), spent in the replay cache.

        Raises ``SignInNotUsable`` when there is no such live transaction (missing, forged,
        already used or expired), and, leaving it unspent, when this browser did not begin
        it or began it for another provider.
        """
        if not state or not _STATE.fullmatch(state):
            raise SignInNotUsable("the sign-in answer has no valid state", reason="no_state")
        issued = self._issued(state)
        if issued is None:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="unknown",
                log_detail="state not issued here",
            )
        value = in_flight.get(self.slot(state))
        transaction = self._open(self.slot(state), value) if value is not None else None
        if transaction is None or not hmac.compare_digest(transaction.state, state):
            raise self._not_in_this_browser(state, issued, now, cookie=value is not None)
        if transaction.provider != provider:
            raise SignInNotUsable(
                "this sign-in was started for another provider",
                reason="other_provider",
                log_detail=f"state of {transaction.provider!r} returned to {provider!r}",
            )
        remaining = transaction.created_at + LOGIN_TTL - now
        if remaining <= 0:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="expired",
                log_detail="state expired",
            )
        # Only one of several answers with the same state (concurrent or replayed) gets it.
        try:
            first = self._store.set_if_absent(self._spent_key(state), b"1", max(remaining, 1))
        except errors.StoreError as error:
            raise TransactionNotSpent(transaction, error) from error
        if not first:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="used",
                log_detail="state already used",
            )
        return transaction

    def _not_in_this_browser(
        self, state: str, issued: int, now: float, *, cookie: bool
    ) -> SignInNotUsable:
        """Why a state issued here has no readable transaction in this browser."""
        stale = "unknown, used or expired sign-in; start again"
        if cookie:
            return SignInNotUsable(
                stale, reason="unknown", log_detail="pre-login cookie unreadable"
            )
        if self._was_spent(state):
            return SignInNotUsable(stale, reason="unknown", log_detail="state already used")
        if _late(issued, now):
            return SignInNotUsable(stale, reason="expired", log_detail="state expired")
        return SignInNotUsable(
            "this sign-in was started in another browser; start again",
            reason="other_browser",
            log_detail="no pre-login cookie for the state",
        )

    def _issued(self, state: str) -> int | None:
        """The second (mod 2**32) at which ``state`` was issued, when its tag verifies under
        one of the secrets; None for anything not issued here."""
        if not _STATE.fullmatch(state):
            return None
        raw = base64.urlsafe_b64decode(state + "=")
        body, tag = raw[:-_STATE_TAG], raw[-_STATE_TAG:]
        if _b64(raw) != state:
            return None
        # every secret's tag is compared, so the time taken does not tell which one matched
        matches = [hmac.compare_digest(tag, expected) for expected in self._tags(body)]
        return int.from_bytes(body[_STATE_RANDOM:], "big") if any(matches) else None

    def _tags(self, body: bytes) -> list[bytes]:
        hashes = self._sealer.key_hashes("login-state", body.hex())
        return [bytes.fromhex(h)[:_STATE_TAG] for h in hashes]

    def _open(self, slot: str, value: str) -> LoginTransaction | None:
        try:
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            return None
        return read_record(_TRANSACTION, self._sealer.open(sealed, context=_context(slot)))

    def _was_spent(self, state: str) -> bool:
        return self._store.get(self._spent_key(state)) is not None

    @staticmethod
    def _spent_key(state: str) -> str:
        # A plain digest: the same key under every secret, so a rotation cannot reopen it.
        return _SPENT_KEY + hashlib.sha256(state.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _context(slot: str) -> str:
    """What a pre-login cookie's sealed value is bound to: its own slot."""
    return "pre-login:" + slot


def _late(issued: int, now: float) -> bool:
    """Whether a state issued at second ``issued`` (mod 2**32) is past ``LOGIN_TTL``."""
    return (int(now) - issued) % _SECONDS > LOGIN_TTL
