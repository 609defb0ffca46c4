"""Browser sign-in: the login transaction between leaving for the identity provider and
coming back, and the one-time codes that hand a finished login to a native app.

A transaction (``state``, provider, ``return_to``, the native app's code challenge, when
it began, and the protocol's secrets: OIDC nonce and PKCE verifier, or the SAML
AuthnRequest id) lives in the browser, sealed in a pre-login cookie of its own, so that
starting a login writes nothing to the store: anonymous starts cannot fill it. Only the
browser that began a login holds its cookie. ``state`` names the cookie and carries a
keyed tag and the time it was issued, so an answer can be told apart from a forgery
without the store. The answer spends the transaction once, in the store's replay cache,
for the rest of its ``LOGIN_TTL`` seconds. For SAML, ``state`` travels as the RelayState.

How a login ends (DESIGN §3): success is a new session and the way back to ``return_to``;
a failure once a valid ``return_to`` is known goes back there with ``?error=<code>``;
anything else raises, for the HTTP layer to answer with a problem. A native login (the
app sent a ``code_challenge``) goes back with ``?code=`` instead of a session: a one-time
code, ``NATIVE_CODE_TTL`` seconds, that only the holder of the matching ``code_verifier``
can exchange.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from pydantic import Field, TypeAdapter

from identity import errors, telemetry
from identity.config.models import ProviderBase, ServiceConfig
from identity.models import Grant, MappedUser, Principal
from identity.providers.base import Endpoints, RedirectLogin, RedirectProvider, SamlProvider
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.sessions import SessionRecord
from identity.store import Store

log = logging.getLogger("chime_broker.logins")

LOGIN_TTL: Final = 600
# Pre-login cookies a browser keeps at once (a fifth login in flight drops the oldest);
# with return_to bounded, each (name and value) stays under 1.4 KB, all under 5.5 KB.
MAX_LOGINS_IN_FLIGHT: Final = 4
MAX_RETURN_TO: Final = 512
NATIVE_CODE_TTL: Final = 60
NATIVE_CODE_PREFIX: Final = "cbn_"
_SPENT_KEY: Final = "login-spent:"
_NATIVE_KEY: Final = "native:"
# A state is 16 random bytes, the issuing second (mod 2**32) and a 12-byte keyed tag:
# 43 characters, which fit SAML's 80-byte RelayState.
_STATE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_STATE_RANDOM: Final = 16
_STATE_TAG: Final = 12
_SECONDS: Final = 2**32
_NATIVE_CODE: Final = re.compile(r"cbn_[A-Za-z0-9_-]{32,96}")
_CODE_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_CODE_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def s256(code_verifier: str) -> str:
    """The PKCE S256 challenge of ``code_verifier`` (RFC 7636, 4.2)."""
    return str(create_s256_code_challenge(code_verifier))


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query (replacing any of the same name); the
    fragment stays last."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode([*kept, *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


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


@dataclass(frozen=True)
class LoginStep:
    """Where the browser goes next. ``session_token`` is set when a browser session began
    (the HTTP layer puts it in the session cookie, valid until ``session_expires_at``);
    ``error`` is the problem code when the login failed and goes back with ``?error=``;
    ``pre_login`` are the pre-login cookies to set or remove."""

    redirect_to: str
    session_token: str | None = field(default=None, repr=False)
    session_expires_at: float | None = None
    error: str | None = None
    pre_login: tuple[PreLoginCookie, ...] = ()


class NativeHandoff(StoredRecord):
    """A finished native login waiting for its app: what the provider proved, bound to the
    app's code challenge."""

    v: Literal[1] = 1
    provider: str
    principal: Principal
    code_challenge: str
    created_at: float
    refresh_token: str | None = Field(default=None, repr=False)
    end_session_url: str | None = Field(default=None, repr=False)
    refresh_token_missing: bool = False


_HANDOFF: Final = TypeAdapter(NativeHandoff)


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


class NativeCodes:
    """One-time codes for native apps: sealed, single use, ``NATIVE_CODE_TTL`` seconds."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    def issue(self, handoff: NativeHandoff) -> str:
        code = NATIVE_CODE_PREFIX + secrets.token_urlsafe(32)
        key = self._key(code)
        body = _HANDOFF.dump_json(handoff)
        self._store.set(key, self._sealer.seal(body, context=key), NATIVE_CODE_TTL)
        return code

    def redeem(self, provider: str, code: str, code_verifier: str, *, now: float) -> NativeHandoff:
        """The handoff for ``code``, spent whether or not the rest checks out.

        Raises ``InvalidRequest`` for an unknown, used or expired code, another provider's
        code, or a ``code_verifier`` whose S256 challenge is not the one sent at login.
        """
        refused = errors.InvalidRequest(
            "unknown, used or expired code, or the code_verifier does not match"
        )
        if not _NATIVE_CODE.fullmatch(code) or not _CODE_VERIFIER.fullmatch(code_verifier):
            raise refused
        key, sealed = "", None
        for candidate in self._keys(code):
            sealed = self._store.get_and_delete(candidate)
            if sealed is not None:
                key = candidate
                break
        if sealed is None:
            raise refused
        handoff = read_record(_HANDOFF, self._sealer.open(sealed, context=key))
        if handoff is None:
            raise refused
        if now - handoff.created_at > NATIVE_CODE_TTL:
            refused.log_detail = "native code expired"
            raise refused
        if handoff.provider != provider:
            refused.log_detail = "native code of another provider"
            raise refused
        if not hmac.compare_digest(s256(code_verifier), handoff.code_challenge):
            refused.log_detail = "code_verifier does not match the code challenge"
            raise refused
        return handoff

    def _key(self, code: str) -> str:
        return _NATIVE_KEY + self._sealer.key_hash("native-code", code)

    def _keys(self, code: str) -> list[str]:
        """``_key`` under each secret, newest first (codes issued before a rotation)."""
        return [_NATIVE_KEY + h for h in self._sealer.key_hashes("native-code", code)]


class SessionOpener(Protocol):
    """What a finished login needs of the broker: the provider's entry, its mapping, and
    opening or ending a session."""

    def provider_config(self, name: str) -> ProviderBase: ...

    def map_user(self, provider: str, principal: Principal) -> MappedUser: ...

    def open_browser_session(
        self,
        provider_cfg: ProviderBase,
        principal: Principal,
        *,
        refresh_token: str | None = None,
        end_session_url: str | None = None,
        refresh_token_missing: bool = False,
    ) -> tuple[str, SessionRecord]: ...

    def start_session(
        self,
        provider_cfg: ProviderBase,
        principal: Principal,
        *,
        origin: str,
        user: MappedUser | None = None,
        refresh_token: str | None = None,
        end_session_url: str | None = None,
        refresh_token_missing: bool = False,
    ) -> Grant: ...

    def end_session(self, session_token: str | None) -> SessionRecord: ...


class BrowserLogins:
    """The browser sign-in use cases: begin, complete (OIDC callback or SAML ACS), and the
    native app's exchange."""

    def __init__(
        self,
        sessions: SessionOpener,
        *,
        service: ServiceConfig,
        store: Store,
        sealer: Sealer,
        endpoints: Endpoints,
        providers: Mapping[str, RedirectProvider],
        saml_providers: Mapping[str, SamlProvider] | None = None,
        clock: Callable[[], float],
    ) -> None:
        self._sessions = sessions
        self._providers = providers
        self._saml_providers: Mapping[str, SamlProvider] = saml_providers or {}
        self.transactions = LoginTransactions(store, sealer)
        self.native_codes = NativeCodes(store, sealer)
        self._service = service
        self._endpoints = endpoints
        self._clock = clock

    def redirect_uri(self, provider: str) -> str:
        """The callback URL registered at the provider."""
        return self._endpoints.callback_url(provider)

    def return_to(self, requested: str | None) -> str | None:
        """``requested`` when ``service.allowed_return_to`` allows it (and it is at most
        ``MAX_RETURN_TO`` characters, to fit the pre-login cookie), else the default."""
        if (
            requested is not None
            and len(requested) <= MAX_RETURN_TO
            and self._service.return_to_allowed(requested)
        ):
            return requested
        return self._service.effective_default_return_to

    def begin(
        self,
        provider: str,
        *,
        in_flight: Mapping[str, str],
        return_to: str | None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
    ) -> LoginStep:
        """Open a transaction and return the way to the provider, with the pre-login cookie
        that holds the transaction (and the removal of ``in_flight`` cookies, by slot, that
        are stale or beyond ``MAX_LOGINS_IN_FLIGHT``). Nothing is written to the store.

        Raises ``InvalidRequest`` when there is nowhere valid to come back to (no allowed
        ``return_to`` at all, or a native login whose ``return_to`` is not allowed).
        """
        native = code_challenge is not None or code_challenge_method is not None
        if native:
            if return_to is None or not self._native_return_to(return_to):
                raise errors.InvalidRequest(
                    "a native login needs a return_to listed in service.allowed_return_to "
                    "(a custom scheme or https)"
                )
            destination = return_to
        else:
            found = self.return_to(return_to)
            if found is None:
                raise errors.InvalidRequest("no return_to is allowed by this broker")
            destination = found
        try:
            if native and (
                code_challenge is None
                or not _CODE_CHALLENGE.fullmatch(code_challenge)
                or code_challenge_method not in (None, "S256")
            ):
                raise errors.InvalidRequest(
                    "code_challenge must be an S256 challenge (43 base64url characters) "
                    "and code_challenge_method S256"
                )
            self._sessions.provider_config(provider)
            now = self._clock()
            transaction = LoginTransaction(
                state=self.transactions.new_state(now),
                provider=provider,
                return_to=destination,
                created_at=now,
                native_challenge=code_challenge if native else None,
            )
            saml = self._saml_providers.get(provider)
            if saml is not None:
                url, transaction = self._begin_saml(saml, transaction)
            else:
                url, transaction = self._begin_redirect(self._provider(provider), transaction)
        except errors.BrokerError as error:
            return self._failed(provider, destination, error)
        pruned = self.transactions.pruned(in_flight, now=now)
        return LoginStep(redirect_to=url, pre_login=(*pruned, self.transactions.seal(transaction)))

    def _begin_redirect(
        self, provider: RedirectProvider, transaction: LoginTransaction
    ) -> tuple[str, LoginTransaction]:
        code_verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(32)
        url = provider.authorization_url(
            redirect_uri=self.redirect_uri(transaction.provider),
            state=transaction.state,
            nonce=nonce,
            code_challenge=s256(code_verifier),
        )
        return url, transaction.model_copy(update={"nonce": nonce, "code_verifier": code_verifier})

    def _begin_saml(
        self, provider: SamlProvider, transaction: LoginTransaction
    ) -> tuple[str, LoginTransaction]:
        # The state is the RelayState; the AuthnRequest id is known once the request is built.
        url, request_id = provider.authorization_request(transaction.state)
        return url, transaction.model_copy(update={"saml_request_id": request_id})

    def complete(
        self,
        provider: str,
        params: Mapping[str, str],
        *,
        in_flight: Mapping[str, str],
        previous_session: str | None = None,
    ) -> LoginStep:
        """Finish the login the provider's answer ``params`` belongs to, whose transaction
        is among the browser's ``in_flight`` pre-login cookies (by slot).

        Raises ``InvalidRequest`` (or ``UnknownProvider``) when the provider has no redirect
        login (a SAML provider answers at its ACS) or the answer has no live transaction of
        this browser and provider; every later failure goes back to the transaction's
        ``return_to`` with ``?error=``. Either way once the transaction is spent, its cookie
        goes. A browser session replaces ``previous_session``, which ends: a session id
        never survives a login.
        """
        redirect_provider = self._provider(provider)
        try:
            transaction = self._take(provider, params.get("state"), in_flight)
        except TransactionNotSpent as failed:
            return self._store_failed(provider, failed)
        try:
            login = redirect_provider.finish(
                redirect_uri=self.redirect_uri(provider),
                params=params,
                code_verifier=transaction.code_verifier,
                nonce=transaction.nonce,
            )
            step = self._signed_in(
                provider,
                login,
                return_to=transaction.return_to,
                native_challenge=transaction.native_challenge,
                previous_session=previous_session,
            )
        except errors.BrokerError as error:
            step = self._failed(provider, transaction.return_to, error)
        except errors.StoreError as error:
            step = self._failed(provider, transaction.return_to, _store_failed(error))
        return replace(step, pre_login=(self.transactions.spent(transaction.state),))

    def complete_saml(
        self,
        provider: str,
        form: Mapping[str, str],
        *,
        in_flight: Mapping[str, str],
        previous_session: str | None = None,
    ) -> LoginStep:
        """Finish a SAML sign-in from the form posted to the ACS (``SAMLResponse``,
        ``RelayState``), with the browser's ``in_flight`` pre-login cookies (by slot).

        A RelayState naming a live transaction must come from the browser that began it
        for this provider (``InvalidRequest`` otherwise, the transaction left unspent);
        the transaction is then spent, and the response must answer its AuthnRequest.
        Every later failure goes back to its ``return_to`` with ``?error=``.

        Any other response is IdP-initiated: refused (``InvalidToken``) unless the provider
        sets ``allow_idp_initiated``; then the RelayState is where to go, when
        ``service.allowed_return_to`` allows it (else ``default_return_to``), no native
        code is possible, and failures raise.
        """
        saml = self.saml_provider(provider)
        relay_state = form.get("RelayState")
        if not self.transactions.pending(relay_state, now=self._clock()):
            return self._idp_initiated(saml, form, previous_session)
        try:
            transaction = self._take(provider, relay_state, in_flight)
        except TransactionNotSpent as failed:
            return self._store_failed(provider, failed)
        try:
            saml_response = form.get("SAMLResponse")
            if not saml_response:
                raise errors.InvalidRequest("the answer carries no SAMLResponse")
            if transaction.saml_request_id is None:
                raise errors.InvalidRequest("this sign-in was not started for SAML")
            principal = saml.finish(
                saml_response, request_id=transaction.saml_request_id, relay_state=relay_state
            )
            step = self._signed_in(
                provider,
                RedirectLogin(principal),
                return_to=transaction.return_to,
                native_challenge=transaction.native_challenge,
                previous_session=previous_session,
            )
        except errors.BrokerError as error:
            step = self._failed(provider, transaction.return_to, error)
        except errors.StoreError as error:
            step = self._failed(provider, transaction.return_to, _store_failed(error))
        return replace(step, pre_login=(self.transactions.spent(transaction.state),))

    def saml_provider(self, name: str) -> SamlProvider:
        """The SAML provider ``name``; ``UnknownProvider`` when there is none of that kind."""
        self._sessions.provider_config(name)
        found = self._saml_providers.get(name)
        if found is None:
            raise errors.UnknownProvider(f"no SAML provider named {name!r}")
        return found

    def _idp_initiated(
        self, saml: SamlProvider, form: Mapping[str, str], previous_session: str | None
    ) -> LoginStep:
        relay_state = form.get("RelayState")
        if not saml.allow_idp_initiated:
            raise errors.InvalidToken(
                "unsolicited response: sign-ins with this provider start at the broker",
                log_detail="no live transaction for the RelayState; IdP-initiated sign-in "
                f"is not allowed for provider {saml.name!r}",
            )
        saml_response = form.get("SAMLResponse")
        if not saml_response:
            raise errors.InvalidRequest("the answer carries no SAMLResponse")
        return_to = self.return_to(relay_state)
        if return_to is None:
            raise errors.InvalidRequest("no return_to is allowed by this broker")
        principal = saml.finish(saml_response, request_id=None, relay_state=relay_state)
        log.info("IdP-initiated sign-in", extra={"fields": {"provider": saml.name}})
        return self._signed_in(
            saml.name,
            RedirectLogin(principal),
            return_to=return_to,
            native_challenge=None,
            previous_session=previous_session,
        )

    def _take(
        self, provider: str, state: str | None, in_flight: Mapping[str, str]
    ) -> LoginTransaction:
        return self.transactions.take(
            state, provider=provider, in_flight=in_flight, now=self._clock()
        )

    def _store_failed(self, provider: str, failed: TransactionNotSpent) -> LoginStep:
        step = self._failed(provider, failed.transaction.return_to, _store_failed(failed.error))
        return replace(step, pre_login=(self.transactions.spent(failed.transaction.state),))

    def _signed_in(
        self,
        provider: str,
        login: RedirectLogin,
        *,
        return_to: str,
        native_challenge: str | None,
        previous_session: str | None,
    ) -> LoginStep:
        """The end of every successful login: a one-time code for a native app, else a new
        browser session that replaces ``previous_session``."""
        provider_cfg = self._sessions.provider_config(provider)
        if native_challenge is not None:
            # Mapped now so that a refused identity goes back as an error, not a code.
            self._sessions.map_user(provider, login.principal)
            code = self.native_codes.issue(
                NativeHandoff(
                    provider=provider,
                    principal=login.principal,
                    code_challenge=native_challenge,
                    created_at=self._clock(),
                    refresh_token=login.refresh_token,
                    end_session_url=login.end_session_url,
                    refresh_token_missing=login.refresh_token_missing,
                )
            )
            log.info("native login finished", extra={"fields": {"provider": provider}})
            return LoginStep(redirect_to=with_query(return_to, code=code))
        token, record = self._sessions.open_browser_session(
            provider_cfg,
            login.principal,
            refresh_token=login.refresh_token,
            end_session_url=login.end_session_url,
            refresh_token_missing=login.refresh_token_missing,
        )
        if previous_session:
            with contextlib.suppress(errors.Unauthenticated):
                self._sessions.end_session(previous_session)
        return LoginStep(
            redirect_to=return_to,
            session_token=token,
            session_expires_at=record.expires_at,
        )

    def redeem_native_code(self, provider: str, code: str, code_verifier: str) -> Grant:
        """``POST /v1/token`` with ``code`` and ``code_verifier``: vend and start the app's
        bearer session."""
        provider_cfg = self._sessions.provider_config(provider)
        handoff = self.native_codes.redeem(provider, code, code_verifier, now=self._clock())
        return self._sessions.start_session(
            provider_cfg,
            handoff.principal,
            origin="native",
            refresh_token=handoff.refresh_token,
            end_session_url=handoff.end_session_url,
            refresh_token_missing=handoff.refresh_token_missing,
        )

    def _provider(self, name: str) -> RedirectProvider:
        self._sessions.provider_config(name)
        found = self._providers.get(name)
        if found is None:
            raise errors.InvalidRequest(f"provider {name!r} has no browser sign-in")
        return found

    def _native_return_to(self, url: str) -> bool:
        """A custom scheme or https target, or a loopback listener (RFC 8252, 7.3)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        scheme = parts.scheme if ":" in url else ""
        if scheme == "http" and parts.hostname not in ("127.0.0.1", "::1"):
            return False
        if len(url) > MAX_RETURN_TO:
            return False
        return self._service.return_to_allowed(url, native=True)

    def _failed(self, provider: str, return_to: str, error: errors.BrokerError) -> LoginStep:
        telemetry.current().login_refused(error.code)
        # An IdP or AWS that failed is the operator's to see; a refused user is not.
        log.log(
            logging.WARNING if error.status >= 500 else logging.INFO,
            "browser sign-in failed: %s",
            error.detail,
            extra={
                "fields": {
                    "provider": provider,
                    "code": error.code,
                    "reason": error.log_detail or error.detail,
                }
            },
        )
        return LoginStep(redirect_to=with_query(return_to, error=error.code), error=error.code)


def _store_failed(error: errors.StoreError) -> errors.StoreUnavailable:
    """A store failure met once the transaction is known: the sign-in goes back to the app
    like any other failure the person cannot fix, instead of ending on the 503 page."""
    return errors.StoreUnavailable(log_detail=str(error))
