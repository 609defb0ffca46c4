"""Browser sign-in: from leaving for the identity provider to coming back, and the one-time
codes that hand a finished login to a native app.

The login's transaction lives in the browser, in a sealed pre-login cookie of its own
(``identity.login_transactions``), so that starting a login writes nothing to the store;
the answer spends it once. For SAML, ``state`` travels as the RelayState.

How a login ends (DESIGN §3): success is a new session and the way back to ``return_to``;
a failure once a valid ``return_to`` is known goes back there with ``?error=<code>``;
anything else raises, for the HTTP layer to answer with a problem. A native login (the
app sent a ``code_challenge``) goes back with ``?code=`` instead of a session: a one-time
code, ``NATIVE_CODE_TTL`` seconds, that only the holder of the matching ``code_verifier``
can exchange.
"""

from __future__ import annotations

import contextlib
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
from identity.login_transactions import (
    LoginTransaction,
    LoginTransactions,
    PreLoginCookie,
    TransactionNotSpent,
)
from identity.models import Grant, MappedUser, Principal
from identity.providers.base import Endpoints, RedirectLogin, RedirectProvider, SamlProvider
from identity.records import StoredRecord, read_record
from identity.sealing import Sealer
from identity.sessions import SessionRecord
from identity.store import Store

log = logging.getLogger("chime_broker.logins")

MAX_RETURN_TO: Final = 512
NATIVE_CODE_TTL: Final = 60
NATIVE_CODE_PREFIX: Final = "cbn_"
_NATIVE_KEY: Final = "native:"
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
