"""What an identity provider can do, as small capabilities that all end in a ``Principal``.

A provider kind implements the capabilities its protocol has: ``TokenProvider`` for the
mobile token exchange (``POST /v1/token``), ``RedirectProvider`` for a browser login
through the OIDC authorization code flow, ``SamlProvider`` for SAML 2.0 Web SSO. Every
method either returns a verified ``Principal`` or raises a ``BrokerError``:
``InvalidToken`` for anything the user presented that does not verify, the ``Upstream*``
errors when the provider itself cannot be asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from identity.config.models import AwsConfig, ProviderBase, ServiceConfig
from identity.config.report import Path
from identity.models import Principal
from identity.store import Store

if TYPE_CHECKING:
    from identity.providers.saml_logout import LogoutBinding, LogoutRequestSeen


@runtime_checkable
class TokenProvider(Protocol):
    """Verifies a token a client obtained from the provider itself.

    ``accepts_id_token`` / ``accepts_access_token`` say which of the two methods is
    supported; the other raises ``InvalidToken``. Implementations are built once at
    start-up and are safe to call from many threads at once.
    """

    @property
    def name(self) -> str:
        """The provider's configured name (``providers[].name``)."""
        ...

    @property
    def kind(self) -> str:
        """The YAML ``kind`` it was built from."""
        ...

    @property
    def accepts_id_token(self) -> bool: ...

    @property
    def accepts_access_token(self) -> bool: ...

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> Principal:
        """Verify an OIDC id token (signature, ``iss``, ``aud``/``azp``, times and, when
        given or required, ``nonce``) and return who it names; ``login_token`` is the token."""
        ...

    def verify_access_token(self, access_token: str) -> Principal:
        """Verify an OAuth access token at the provider's inspection endpoint, check it
        was issued to this app, and return who it names; ``login_token`` is the token."""
        ...


@dataclass(frozen=True)
class RedirectLogin:
    """What a finished browser login proved: the principal, the refresh token the provider
    gave (``None`` when it gave none) and the URL that signs the user out at the provider
    (``None`` when it has no logout endpoint). ``refresh_token_missing``: one was asked for
    (``offline_access``) and none came, so the session cannot be re-checked."""

    principal: Principal
    refresh_token: str | None = field(default=None, repr=False)
    end_session_url: str | None = field(default=None, repr=False)
    refresh_token_missing: bool = False


@dataclass(frozen=True)
class Refreshed:
    """A refresh the provider accepted: the principal its new token proves (``None`` when
    the answer carries nothing to verify) and the refresh token to use next time."""

    principal: Principal | None
    refresh_token: str = field(repr=False)


class RedirectProvider(Protocol):
    """A browser login through the authorization code flow with PKCE.

    The caller owns the transaction: it generates ``state``, ``nonce`` and the PKCE
    ``code_verifier``, stores them bound to the browser, and checks ``state`` on the way
    back before calling ``finish``.
    """

    @property
    def name(self) -> str: ...

    @property
    def response_mode(self) -> str:
        """``query`` (the provider comes back with a GET) or ``form_post`` (a POST)."""
        ...

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        """The URL to send the browser to (``code_challenge_method=S256``)."""
        ...

    def finish(
        self,
        *,
        redirect_uri: str,
        params: Mapping[str, str],
        code_verifier: str,
        nonce: str,
    ) -> RedirectLogin:
        """Check the callback's ``iss`` (RFC 9207), exchange its ``code`` for tokens,
        verify the id token with the same checks as ``TokenProvider.verify_id_token`` and
        the stored ``nonce`` (or inspect the access token), and return what the login
        proved. An ``error`` parameter from the provider raises ``AccessDenied`` when the
        user refused, an ``Upstream*`` error otherwise; a refused code ``InvalidToken``."""
        ...

    def refresh(self, refresh_token: str) -> Refreshed:
        """Ask the provider whether the user may still sign in; raises
        ``ReauthenticationRequired`` when it refuses the refresh token."""
        ...


class SamlProvider(Protocol):
    """A SAML 2.0 service provider for one identity provider: SP-initiated Web SSO
    (HTTP-Redirect AuthnRequest, HTTP-POST Response), IdP-initiated only when the provider
    allows it.

    The caller owns the transaction: it picks an opaque RelayState, stores the AuthnRequest
    id that ``authorization_request`` returns under it, bound to the browser, and hands
    that id back to ``finish`` exactly once.
    """

    @property
    def name(self) -> str: ...

    @property
    def allow_idp_initiated(self) -> bool:
        """Whether unsolicited (IdP-initiated) responses may sign a user in."""
        ...

    def warm_up(self) -> None:
        """Load what sign-ins need from the IdP now (at start-up of a serving broker)."""

    def ready(self) -> bool:
        """Whether the IdP's metadata is held, so that sign-ins can start."""
        ...

    def authorization_request(self, relay_state: str) -> tuple[str, str]:
        """The IdP URL carrying a new AuthnRequest with ``relay_state`` (1..80 bytes), and
        that request's id (to store for the InResponseTo check). Raises
        ``UpstreamUnavailable`` while the IdP's metadata is not held."""
        ...

    def finish(
        self, saml_response_b64: str, *, request_id: str | None, relay_state: str | None
    ) -> Principal:
        """Validate the posted ``SAMLResponse`` in strict mode (signed assertion, audience,
        destination, recipient, times, replay, ``InResponseTo == request_id``; ``None``
        only for an IdP-initiated response, refused unless allowed) and return the
        principal it asserts. Raises ``InvalidToken``, ``AccessDenied`` (the IdP refused
        the user), ``PayloadTooLarge`` or ``UpstreamUnavailable``."""
        ...

    def check_assertion(self, saml_response_b64: str) -> Principal:
        """For a dry run (``chime-broker explain``): every check of ``finish`` that needs
        no login transaction (signature, issuer, audience, destination, recipient, times),
        with neither InResponseTo nor one-time use checked and nothing stored."""
        ...

    def metadata(self) -> str:
        """The SP metadata XML (entity id, ACS and SLO URLs from ``service.public_url``)."""
        ...

    def logout_request(
        self, binding: LogoutBinding, params: Mapping[str, str], query_string: str
    ) -> LogoutRequestSeen:
        """The verified IdP-initiated LogoutRequest in ``params`` (signed, issuer,
        destination, times, used once); raises ``InvalidToken`` or ``InvalidRequest``."""
        ...

    def logout_response_url(
        self, request: LogoutRequestSeen, relay_state: str | None
    ) -> str | None:
        """The IdP's SLO URL carrying the (signed) LogoutResponse to ``request``, or None
        when the IdP publishes no HTTP-Redirect SingleLogoutService."""
        ...

    def end_session_url(
        self, *, name_id: str, name_id_format: str | None, session_index: str | None
    ) -> str | None:
        """The IdP's SLO URL carrying a signed LogoutRequest for ``name_id``, or None when
        the SP has no key or the IdP no HTTP-Redirect SingleLogoutService."""
        ...


# -- building -----------------------------------------------------------------------------


class ProviderProblem(ValueError):
    """A provider entry that validates but cannot be built (an unusable key, an unreadable
    metadata file); ``path`` is relative to the entry."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class Endpoints(Protocol):
    """The broker's own URLs that IdPs are told about, all below ``service.public_url``."""

    def callback_url(self, provider: str) -> str: ...

    def acs_url(self, provider: str) -> str: ...

    def metadata_url(self, provider: str) -> str: ...

    def slo_url(self, provider: str) -> str: ...


@dataclass(frozen=True)
class BuildContext:
    """What building a provider may use besides its own entry. Building reads local files
    and parses keys; it never contacts an IdP or AWS."""

    aws: AwsConfig
    service: ServiceConfig
    demo: bool
    store: Store
    endpoints: Endpoints
    clock: Callable[[], float]


@dataclass(frozen=True)
class Built:
    """The capabilities one provider entry has once built."""

    token: TokenProvider | None = None
    redirect: RedirectProvider | None = None
    saml: SamlProvider | None = None
    guests: Any = None


_Entry = TypeVar("_Entry", bound=ProviderBase)


@dataclass(frozen=True)
class ProviderKind(Generic[_Entry]):
    """One YAML ``kind``: its config model and how an entry of it is built."""

    model: type[_Entry]
    build: Callable[[_Entry, BuildContext], Built]
