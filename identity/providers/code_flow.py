"""Browser logins through the OAuth 2.0 authorization code flow, with Authlib's client.

One ``CodeFlowProvider`` per provider entry that can sign a browser in: ``oidc`` and
``cognito_user_pool`` (endpoints from the issuer's discovery document unless configured),
``google``, ``apple`` (``response_mode=form_post``; the client secret is an ES256 JWT),
``facebook`` and ``amazon`` (their real endpoints by default, every one overridable).

Every login uses PKCE S256 and ``state``; kinds with an id token also ``nonce``, and the id
token goes through the same ``verify_jwt()`` as the mobile path (``IdTokenProvider``).
For ``oidc`` the claims at the userinfo endpoint are merged in (``userinfo``).
Facebook and Login with Amazon answer with an access token, which is inspected exactly as
a mobile app's would be. The authorization response's ``iss`` (RFC 9207) must name the
provider's issuer whenever it is present, and must be present when the provider says it
sends one. The caller owns the transaction (state, nonce, verifier, browser binding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.client import OAuth2Client
from pydantic import SecretStr

from identity.discovery import OidcDiscovery, endpoint
from identity.errors import (
    AccessDenied,
    BrokerError,
    InvalidRequest,
    InvalidToken,
    ReauthenticationRequired,
    UpstreamError,
    UpstreamUnavailable,
)
from identity.http import as_upstream, no_answer
from identity.models import Principal
from identity.providers.base import RedirectLogin, Refreshed, TokenProvider
from identity.providers.id_token import IdTokenProvider
from identity.providers.userinfo import UserinfoClaims

log = logging.getLogger("chime_broker.redirect")

# OAuth errors at the authorization endpoint that mean "the user (or the IdP's policy for
# this user) said no"; anything else is the provider failing.
_USER_REFUSALS: Final = frozenset(
    {
        "access_denied",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
        "user_cancelled_login",
        "user_cancelled_authorize",
    }
)


@dataclass(frozen=True)
class AuthorizationServer:
    """Where one provider's code flow happens and what it promises.

    ``issuers`` are the accepted spellings of the RFC 9207 ``iss`` parameter;
    ``sends_iss`` is true when the provider advertises it
    (``authorization_response_iss_parameter_supported``), so a response without it is
    refused.
    """

    authorization_endpoint: str
    token_endpoint: str
    issuers: tuple[str, ...]
    sends_iss: bool = False
    end_session_endpoint: str | None = None
    token_auth_method: str = "client_secret_post"  # noqa: S105 (a method name)
    userinfo_endpoint: str | None = None


class Verification(Protocol):
    """Turns a token endpoint answer into the principal it proves."""

    uses_nonce: bool

    def login(self, token: Mapping[str, Any], *, nonce: str | None) -> Principal: ...

    def refreshed(self, token: Mapping[str, Any]) -> Principal | None: ...


class IdTokenVerification:
    """The id token in the answer, through ``IdTokenProvider`` (``verify_jwt``)."""

    uses_nonce = True

    def __init__(self, provider: IdTokenProvider) -> None:
        self._provider = provider

    def login(self, token: Mapping[str, Any], *, nonce: str | None) -> Principal:
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise UpstreamError(
                f"{self._provider.name}: the token endpoint returned no id token",
                log_detail="token response without id_token",
            )
        return self._provider.verify_id_token(id_token, nonce=nonce)

    def refreshed(self, token: Mapping[str, Any]) -> Principal | None:
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            return None
        # A refreshed id token carries no fresh nonce (OIDC Core 12.2).
        return self._provider.verify_id_token(id_token, nonce=None)


class AccessTokenInspection:
    """The access token in the answer, inspected like a mobile app's (Facebook, Amazon)."""

    uses_nonce = False

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider

    def login(self, token: Mapping[str, Any], *, nonce: str | None) -> Principal:
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise UpstreamError(
                f"{self._provider.name}: the token endpoint returned no access token",
                log_detail="token response without access_token",
            )
        return self._provider.verify_access_token(access_token)

    def refreshed(self, token: Mapping[str, Any]) -> Principal | None:
        return self.login(token, nonce=None)


class DiscoveredServer:
    """The authorization server an issuer's discovery document describes; endpoints given
    here (``authorization_endpoint``, ``token_endpoint``) win over the document's. The
    document is the provider's one ``OidcDiscovery``, shared with its signing keys."""

    def __init__(
        self,
        discovery: OidcDiscovery,
        *,
        authorization_endpoint: str | None = None,
        token_endpoint: str | None = None,
    ) -> None:
        self._discovery = discovery
        self._overrides = (authorization_endpoint, token_endpoint)

    def __call__(self) -> AuthorizationServer:
        document = self._discovery()
        methods = document.get("token_endpoint_auth_methods_supported")
        # OIDC Discovery: client_secret_basic when the provider does not say.
        basic = not isinstance(methods, list) or "client_secret_basic" in methods
        return AuthorizationServer(
            authorization_endpoint=self._overrides[0]
            or self._required(document, "authorization_endpoint"),
            token_endpoint=self._overrides[1] or self._required(document, "token_endpoint"),
            issuers=(self._discovery.issuer,),
            sends_iss=document.get("authorization_response_iss_parameter_supported") is True,
            end_session_endpoint=endpoint(document, "end_session_endpoint"),
            token_auth_method="client_secret_basic" if basic else "client_secret_post",
            userinfo_endpoint=endpoint(document, "userinfo_endpoint"),
        )

    def _required(self, document: Mapping[str, Any], name: str) -> str:
        found = endpoint(document, name)
        if found is None:
            raise UpstreamUnavailable(
                "identity provider metadata unusable",
                log_detail=f"discovery document at {self._discovery.url}: unusable {name}",
            )
        return found


ServerSource = Callable[[], AuthorizationServer]
SecretSource = Callable[[], str | None]


class CodeFlowProvider:
    """A ``RedirectProvider``: the authorization code flow with PKCE S256 for one provider.

    ``server`` resolves the endpoints (discovery or configuration), ``client_secret``
    gives the secret for each token request (``None``: a public client), ``verification``
    turns the token answer into a principal; ``post_logout_redirect_uri`` (the app's
    ``default_return_to``) is where the provider's logout sends the person back;
    ``userinfo`` (when set and the server has a userinfo endpoint) adds the claims found
    there; ``offline``: the scopes ask for a refresh token, so a login without one is
    logged and marked. Safe to call from many threads: every call uses its own
    ``OAuth2Session``.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        client_id: str,
        client_secret: SecretSource,
        scopes: tuple[str, ...],
        server: ServerSource,
        verification: Verification,
        extra_authorize_params: Mapping[str, str] | None = None,
        post_logout_redirect_uri: str | None = None,
        offline: bool = False,
        userinfo: UserinfoClaims | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ) -> None:
        self._post_logout_redirect_uri = post_logout_redirect_uri
        self._name = name
        self.kind = kind
        self.client_id = client_id
        self._client_secret = client_secret
        self.scopes = scopes
        self._server = server
        self._verification = verification
        self._extra = dict(extra_authorize_params or {})
        self._offline = offline
        self._userinfo = userinfo
        self._timeouts = (connect_timeout, read_timeout)

    def __repr__(self) -> str:
        return f"CodeFlowProvider(name={self._name!r}, kind={self.kind!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def response_mode(self) -> str:
        """``query`` (GET callback) or ``form_post`` (POST callback)."""
        return self._extra.get("response_mode", "query")

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        server = self._server()
        # Authlib's client builds the request; it needs no HTTP session for that.
        client = OAuth2Client(
            None, client_id=self.client_id, scope=" ".join(self.scopes), redirect_uri=redirect_uri
        )
        extra = dict(self._extra)
        if self._verification.uses_nonce:
            extra["nonce"] = nonce
        url, _ = client.create_authorization_url(
            server.authorization_endpoint,
            state=state,
            code_challenge=code_challenge,
            code_challenge_method="S256",
            **extra,
        )
        return str(url)

    def finish(
        self,
        *,
        redirect_uri: str,
        params: Mapping[str, str],
        code_verifier: str,
        nonce: str,
    ) -> RedirectLogin:
        server = self._server()
        self._check_issuer(server, params.get("iss"))
        error = params.get("error")
        if error is not None:
            raise _authorization_error(self._name, error)
        code = params.get("code")
        if not code:
            raise InvalidRequest("the identity provider's answer has no code")
        token = self._token_request(
            server,
            grant_type="authorization_code",
            code=code,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
        )
        principal = self._verification.login(token, nonce=nonce)
        access_token = token.get("access_token")
        if self._userinfo is not None and server.userinfo_endpoint and access_token:
            principal = self._userinfo.merged(
                principal, server.userinfo_endpoint, str(access_token)
            )
        refresh_token = token.get("refresh_token")
        if not (isinstance(refresh_token, str) and refresh_token):
            refresh_token = None
        missing = self._offline and refresh_token is None
        if missing:
            log.warning(
                "no refresh token although offline access was asked for; "
                "the session cannot be re-checked",
                extra={"fields": {"provider": self._name}},
            )
        return RedirectLogin(
            principal=principal,
            refresh_token=refresh_token,
            end_session_url=self._end_session_url(server, token),
            refresh_token_missing=missing,
        )

    def refresh(self, refresh_token: str) -> Refreshed:
        server = self._server()
        try:
            token = self._token_request(
                server, grant_type="refresh_token", refresh_token=refresh_token
            )
            # A refreshed token that does not verify is a refusal too.
            principal = self._verification.refreshed(token)
        except InvalidToken as e:
            raise ReauthenticationRequired(
                "the identity provider no longer accepts this sign-in; sign in again",
                log_detail=e.log_detail,
            ) from None
        renewed = token.get("refresh_token")
        return Refreshed(
            principal=principal,
            refresh_token=renewed if isinstance(renewed, str) and renewed else refresh_token,
        )

    def _check_issuer(self, server: AuthorizationServer, iss: str | None) -> None:
        if iss is None:
            if server.sends_iss:
                raise InvalidRequest(
                    "the authorization response does not name its issuer",
                    log_detail=f"{self._name}: iss missing although advertised (RFC 9207)",
                )
            return
        if iss not in server.issuers:
            raise InvalidRequest(
                "the authorization response comes from another issuer",
                log_detail=f"{self._name}: iss {iss[:80]!r} is not this provider's (RFC 9207)",
            )

    def _token_request(self, server: AuthorizationServer, **params: str) -> dict[str, Any]:
        secret = self._client_secret()
        method = server.token_auth_method if secret is not None else "none"
        with as_upstream(
            OAuth2Session(
                client_id=self.client_id,
                client_secret=secret,
                token_endpoint_auth_method=method,
                scope=None,
            ),
            pool_maxsize=1,
            operation="token",
        ) as session:
            grant_type = params.pop("grant_type")
            try:
                if grant_type == "refresh_token":
                    token = session.refresh_token(
                        server.token_endpoint,
                        timeout=self._timeouts,
                        allow_redirects=False,
                        **params,
                    )
                else:
                    token = session.fetch_token(
                        server.token_endpoint,
                        grant_type=grant_type,
                        timeout=self._timeouts,
                        allow_redirects=False,
                        **params,
                    )
            except AuthlibBaseError as e:
                raise _token_error(self._name, str(e.error), grant_type) from None
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                raise UpstreamError(
                    f"{self._name}: the token endpoint failed",
                    log_detail=f"{grant_type} at {server.token_endpoint}: HTTP {status}",
                ) from None
            except requests.RequestException as e:
                raise no_answer(
                    e,
                    upstream=f"{self._name}: the token endpoint",
                    where=f"{grant_type} at {server.token_endpoint}",
                ) from None
            except ValueError:
                raise UpstreamError(
                    f"{self._name}: the token endpoint answered nonsense",
                    log_detail=f"{grant_type} at {server.token_endpoint}: not a JSON object",
                ) from None
        return dict(token)

    def _end_session_url(self, server: AuthorizationServer, token: Mapping[str, Any]) -> str | None:
        if server.end_session_endpoint is None:
            return None
        params = {"client_id": self.client_id}
        id_token = token.get("id_token")
        if isinstance(id_token, str) and id_token:
            params["id_token_hint"] = id_token
        if self._post_logout_redirect_uri is not None:
            # Back to the app after signing out at the provider (RP-Initiated Logout 1.0).
            params["post_logout_redirect_uri"] = self._post_logout_redirect_uri
        return rp_logout_url(server.end_session_endpoint, params)


def rp_logout_url(end_session_endpoint: str, params: Mapping[str, str]) -> str:
    """The RP-Initiated Logout 1.0 request: ``params`` added to the provider's
    ``end_session_endpoint`` (Authlib builds no logout request for a client)."""
    separator = "&" if urlsplit(end_session_endpoint).query else "?"
    return end_session_endpoint + separator + urlencode(params)


def _authorization_error(provider: str, error: str) -> BrokerError:
    shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "malformed"
    if error in _USER_REFUSALS:
        return AccessDenied(
            "the sign-in was cancelled or refused at the identity provider",
            log_detail=f"{provider}: authorization error {shown}",
        )
    if error == "temporarily_unavailable":
        return UpstreamUnavailable(
            f"{provider}: the identity provider is temporarily unavailable",
            log_detail=f"{provider}: authorization error {shown}",
        )
    return UpstreamError(
        f"{provider}: the identity provider refused the sign-in request",
        log_detail=f"{provider}: authorization error {shown}",
    )


def _token_error(provider: str, error: str, grant_type: str) -> BrokerError:
    shown = error if error.replace("_", "").isalnum() and len(error) <= 64 else "malformed"
    detail = f"{provider}: {grant_type} refused with {shown}"
    if error in ("invalid_grant", "invalid_request"):
        # A code that is unknown, used, expired, for another client, or whose PKCE
        # verifier does not match; or a refresh token that was revoked.
        return InvalidToken("the identity provider refused the grant", log_detail=detail)
    return UpstreamError(f"{provider}: the token endpoint refused the broker", log_detail=detail)


# -- construction helpers for the kinds --------------------------------------------------


def static_secret(value: SecretStr | None) -> SecretSource:
    """A client secret that does not change."""
    secret = value.get_secret_value() if value is not None else None
    return lambda: secret


def id_token_verifier(token_provider: IdTokenProvider, client_id: str) -> Verification:
    """The id token of a browser login of ``client_id``, through the mobile verifier."""
    return IdTokenVerification(token_provider.for_browser(client_id))


def fixed(server: AuthorizationServer) -> ServerSource:
    """A server whose endpoints are configured, not discovered."""
    return lambda: server
