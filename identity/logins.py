"""Browser sign-in: the login transaction between leaving for the identity provider and
coming back, and the one-time codes that hand a finished login to a native app.

A transaction (``state`` -> provider, ``return_to``, the native app's code challenge,
when it began, and the protocol's secrets: OIDC nonce and PKCE verifier, or the SAML
AuthnRequest id) is sealed in the store under a keyed hash of ``state``, lives
``LOGIN_TTL`` seconds, is taken at most once, and only by the browser that began it: the
caller passes the random value of that browser's pre-login cookie, and the transaction
keeps only a keyed hash of it. For SAML, ``state`` travels as the RelayState.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, TypeAdapter

from identity import errors
from identity.config.models import ProviderBase, ServiceConfig
from identity.models import Grant, MappedUser, Principal
from identity.providers.base import Endpoints, RedirectLogin, RedirectProvider, SamlProvider
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.sessions import SessionRecord
from identity.store import Store

log = logging.getLogger("chime_broker.logins")

LOGIN_TTL: Final = 600
NATIVE_CODE_TTL: Final = 60
NATIVE_CODE_PREFIX: Final = "cbn_"
_TRANSACTION_KEY: Final = "login:"
_NATIVE_KEY: Final = "native:"
_STATE: Final = re.compile(r"[A-Za-z0-9_-]{32,128}")
_NATIVE_CODE: Final = re.compile(r"cbn_[A-Za-z0-9_-]{32,96}")
_CODE_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_CODE_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def s256(code_verifier: str) -> str:
    """The PKCE S256 challenge of ``code_verifier`` (RFC 7636, 4.2)."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query (replacing any of the same name); the
    fragment stays last."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query = urlencode([*kept, *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class LoginTransaction(StoredRecord):
    """One browser login in flight. ``binding`` is the keyed hash of the pre-login cookie;
    an OIDC login keeps ``nonce`` and ``code_verifier``, a SAML login ``saml_request_id``."""

    v: Literal[1] = 1
    provider: str
    return_to: str
    binding: str = Field(repr=False)
    created_at: float
    nonce: str = Field(default="", repr=False)
    code_verifier: str = Field(default="", repr=False)
    native_challenge: str | None = None
    saml_request_id: str | None = Field(default=None, repr=False)


_TRANSACTION: Final = TypeAdapter(LoginTransaction)


@dataclass(frozen=True)
class LoginStep:
    """Where the browser goes next. ``session_token`` is set when a browser session began
    (the HTTP layer puts it in the session cookie, valid until ``session_expires_at``);
    ``error`` is the problem code when the login failed and goes back with ``?error=``."""

    redirect_to: str
    session_token: str | None = field(default=None, repr=False)
    session_expires_at: float | None = None
    error: str | None = None


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


class LoginTransactions:
    """Login transactions in the store, sealed; each taken at most once."""

    def __init__(self, store: Store, sealer: Sealer) -> None:
        self._store = store
        self._sealer = sealer

    def binding(self, pre_login_value: str) -> str:
        """What a transaction keeps of the browser's pre-login cookie."""
        return self._sealer.key_hash("pre-login", pre_login_value)

    def bindings(self, pre_login_value: str) -> list[str]:
        """``binding`` under each secret, newest first: a transaction begun before a
        rotation of ``service.secret_key`` keeps the binding under the older one."""
        return self._sealer.key_hashes("pre-login", pre_login_value)

    @staticmethod
    def new_state() -> str:
        """A fresh random ``state`` (43 characters: it fits SAML's 80-byte RelayState)."""
        return secrets.token_urlsafe(32)

    def begin(self, transaction: LoginTransaction, *, state: str | None = None) -> str:
        """Store ``transaction`` under ``state`` (from ``new_state``; a new one when not
        given) and return the state."""
        state = state if state is not None else self.new_state()
        key = self._key(state)
        body = _TRANSACTION.dump_json(transaction)
        self._store.set(key, self._sealer.seal(body, context=key), LOGIN_TTL)
        return state

    def pending(self, state: str | None) -> bool:
        """Whether ``state`` names a transaction in the store (of any browser), without
        taking it."""
        if not state or not _STATE.fullmatch(state):
            return False
        return self._find(state)[1] is not None

    def take(
        self, state: str | None, *, provider: str, binding: str | Sequence[str], now: float
    ) -> LoginTransaction:
        """The transaction of ``state``, removed from the store.

        Raises ``InvalidRequest`` when there is no such live transaction (missing, unknown,
        already used or expired), and, leaving it in place for its own browser, when it was
        begun by another browser or for another provider.
        """
        if not state or not _STATE.fullmatch(state):
            raise SignInNotUsable("the sign-in answer has no valid state", reason="no_state")
        key, transaction = self._find(state)
        if transaction is None:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="unknown",
                log_detail="state not found",
            )
        accepted = [binding] if isinstance(binding, str) else list(binding)
        # every candidate is compared, so the time taken does not tell which one matched
        matches = [hmac.compare_digest(transaction.binding, b) for b in accepted]
        if not any(matches):
            raise SignInNotUsable(
                "this sign-in was started in another browser; start again",
                reason="other_browser",
                log_detail="pre-login cookie does not match the transaction",
            )
        if transaction.provider != provider:
            raise SignInNotUsable(
                "this sign-in was started for another provider",
                reason="other_provider",
                log_detail=f"state of {transaction.provider!r} returned to {provider!r}",
            )
        # Only one of several concurrent answers with the same state gets it.
        if self._store.get_and_delete(key) is None:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="used",
                log_detail="state already used",
            )
        if now - transaction.created_at > LOGIN_TTL:
            raise SignInNotUsable(
                "unknown, used or expired sign-in; start again",
                reason="expired",
                log_detail="state expired",
            )
        return transaction

    def _read(self, key: str) -> LoginTransaction | None:
        sealed = self._store.get(key)
        if sealed is None:
            return None
        return read_record(_TRANSACTION, self._sealer.open(sealed, context=key))

    def _key(self, state: str) -> str:
        return _TRANSACTION_KEY + self._sealer.key_hash("login-state", state)

    def _find(self, state: str) -> tuple[str, LoginTransaction | None]:
        """The store key of ``state``'s transaction and the transaction, looked up under
        each secret's key, newest first; the newest key and None when there is none."""
        keys = [_TRANSACTION_KEY + h for h in self._sealer.key_hashes("login-state", state)]
        for key in keys:
            transaction = self._read(key)
            if transaction is not None:
                return key, transaction
        return keys[0], None


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
        """``requested`` when ``service.allowed_return_to`` allows it, else the default."""
        if requested is not None and self._service.return_to_allowed(requested):
            return requested
        return self._service.effective_default_return_to

    def begin(
        self,
        provider: str,
        *,
        pre_login: str,
        return_to: str | None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
    ) -> LoginStep:
        """Open a transaction bound to ``pre_login`` and return the way to the provider.

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
            transaction = LoginTransaction(
                provider=provider,
                return_to=destination,
                binding=self.transactions.binding(pre_login),
                created_at=self._clock(),
                native_challenge=code_challenge if native else None,
            )
            saml = self._saml_providers.get(provider)
            if saml is not None:
                url = self._begin_saml(saml, transaction)
            else:
                url = self._begin_redirect(self._provider(provider), transaction)
        except errors.BrokerError as error:
            return self._failed(provider, destination, error)
        return LoginStep(redirect_to=url)

    def _begin_redirect(self, provider: RedirectProvider, transaction: LoginTransaction) -> str:
        code_verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(32)
        state = self.transactions.begin(
            transaction.model_copy(update={"nonce": nonce, "code_verifier": code_verifier})
        )
        return provider.authorization_url(
            redirect_uri=self.redirect_uri(transaction.provider),
            state=state,
            nonce=nonce,
            code_challenge=s256(code_verifier),
        )

    def _begin_saml(self, provider: SamlProvider, transaction: LoginTransaction) -> str:
        # The transaction's state is the RelayState; the AuthnRequest id is known only
        # once the request is built, so the state comes first.
        state = self.transactions.new_state()
        url, request_id = provider.authorization_request(state)
        self.transactions.begin(
            transaction.model_copy(update={"saml_request_id": request_id}), state=state
        )
        return url

    def complete(
        self,
        provider: str,
        params: Mapping[str, str],
        *,
        pre_login: str | None,
        previous_session: str | None = None,
    ) -> LoginStep:
        """Finish the login the provider's answer ``params`` belongs to.

        Raises ``InvalidRequest`` (or ``UnknownProvider``) when the provider has no redirect
        login (a SAML provider answers at its ACS) or the answer has no live transaction of
        this browser and provider; every later failure goes back to the transaction's
        ``return_to`` with ``?error=``. A browser session replaces ``previous_session``,
        which ends: a session id never survives a login.
        """
        redirect_provider = self._provider(provider)
        transaction = self._take(provider, params.get("state"), pre_login)
        try:
            login = redirect_provider.finish(
                redirect_uri=self.redirect_uri(provider),
                params=params,
                code_verifier=transaction.code_verifier,
                nonce=transaction.nonce,
            )
            return self._signed_in(
                provider,
                login,
                return_to=transaction.return_to,
                native_challenge=transaction.native_challenge,
                previous_session=previous_session,
            )
        except errors.BrokerError as error:
            return self._failed(provider, transaction.return_to, error)

    def complete_saml(
        self,
        provider: str,
        form: Mapping[str, str],
        *,
        pre_login: str | None,
        previous_session: str | None = None,
    ) -> LoginStep:
        """Finish a SAML sign-in from the form posted to the ACS (``SAMLResponse``,
        ``RelayState``).

        A RelayState naming a live transaction must come from the browser that began it
        for this provider (``InvalidRequest`` otherwise, the transaction left in place);
        the transaction is then spent, and the response must answer its AuthnRequest.
        Every later failure goes back to its ``return_to`` with ``?error=``.

        Any other response is IdP-initiated: refused (``InvalidToken``) unless the provider
        sets ``allow_idp_initiated``; then the RelayState is where to go, when
        ``service.allowed_return_to`` allows it (else ``default_return_to``), no native
        code is possible, and failures raise.
        """
        saml = self.saml_provider(provider)
        relay_state = form.get("RelayState")
        if not self.transactions.pending(relay_state):
            return self._idp_initiated(saml, form, previous_session)
        transaction = self._take(provider, relay_state, pre_login)
        try:
            saml_response = form.get("SAMLResponse")
            if not saml_response:
                raise errors.InvalidRequest("the answer carries no SAMLResponse")
            if transaction.saml_request_id is None:
                raise errors.InvalidRequest("this sign-in was not started for SAML")
            principal = saml.finish(
                saml_response, request_id=transaction.saml_request_id, relay_state=relay_state
            )
            return self._signed_in(
                provider,
                RedirectLogin(principal),
                return_to=transaction.return_to,
                native_challenge=transaction.native_challenge,
                previous_session=previous_session,
            )
        except errors.BrokerError as error:
            return self._failed(provider, transaction.return_to, error)

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

    def _take(self, provider: str, state: str | None, pre_login: str | None) -> LoginTransaction:
        return self.transactions.take(
            state,
            provider=provider,
            binding=self.transactions.bindings(pre_login) if pre_login else "",
            now=self._clock(),
        )

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
        return self._service.return_to_allowed(url, native=True)

    def _failed(self, provider: str, return_to: str, error: errors.BrokerError) -> LoginStep:
        log.info(
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
