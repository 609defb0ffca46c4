"""A local OpenID Connect provider for tests and the embedded demo.

`DevIdentityProvider` is a real OpenID Provider on a loopback port: Authlib's
authorization server (authorization code + PKCE S256, refresh tokens, OpenID
Connect id tokens, UserInfo, RP-initiated logout, RFC 9207 ``iss``) with Flask
as the web layer, served by Werkzeug in a background thread.

Nobody types a password. The user who "logs in" at ``/authorize`` is the one
queued with `DevIdentityProvider.next_login`; when the queue is empty the
endpoint shows a small page listing the users added with
`DevIdentityProvider.add_user`, with a "Sign in" and a "Cancel" button.

Every user claim goes into the id token and the UserInfo response whatever
the requested scopes (scopes only gate refresh tokens and the UserInfo
endpoint), so tests and the demo control the claims completely.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError, scope_to_list
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode, OpenIDToken, UserInfo, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, request
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["DevIdentityProvider", "DevLogout"]

SCOPES_SUPPORTED = ("openid", "profile", "email", "offline_access", "groups", "phone", "address")
SIGNING_ALG = "RS256"
AUTHORIZATION_CODE_LIFETIME = 600

# RSA key generation costs tens of milliseconds; one pool per process keeps a
# test suite that starts a provider per test fast. Providers draw from it in
# order, so a provider's rotated keys are always distinct from its earlier ones.
_KEY_POOL: list[rsa.RSAPrivateKey] = []
_KEY_POOL_LOCK = threading.Lock()


def _pooled_key(index: int) -> rsa.RSAPrivateKey:
    with _KEY_POOL_LOCK:
        while len(_KEY_POOL) <= index:
            _KEY_POOL.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEY_POOL[index]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwk_thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an RSA public JWK, used as its ``kid``."""
    members = {name: public_jwk[name] for name in ("e", "kty", "n")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    public_jwk: Mapping[str, Any]
    private_jwk: Mapping[str, Any]

    @classmethod
    def from_key(cls, private_key: rsa.RSAPrivateKey) -> _SigningKey:
        public = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        kid = _jwk_thumbprint(public)
        metadata = {"kid": kid, "alg": SIGNING_ALG, "use": "sig"}
        private = RSAAlgorithm.to_jwk(private_key, as_dict=True)
        return cls(kid, private_key, {**public, **metadata}, {**private, **metadata})


@dataclass(frozen=True)
class DevClient:
    """A registered relying party; implements Authlib's ``ClientMixin``.

    A client without a secret is public (token endpoint auth method ``none``,
    PKCE only); one with a secret must use client_secret_basic or _post.
    """

    client_id: str
    client_secret: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.post_logout_redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return "openid"
        return " ".join(s for s in scope_to_list(scope) if s in SCOPES_SUPPORTED)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(frozen=True)
class _Login:
    """Who signed in, with the claims their tokens carry."""

    sub: str
    claims: Mapping[str, Any]
    auth_time: int

    def get_user_id(self) -> str:
        return self.sub


@dataclass(frozen=True)
class _AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    login: _Login
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: float

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.login.auth_time

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


@dataclass
class _IssuedToken:
    access_token: str
    refresh_token: str | None
    client: DevClient
    scope: str
    login: _Login
    issued_at: float
    expires_in: int
    refresh_revoked: bool = False

    def check_client(self, client: DevClient) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> _Login:
        return self.login

    def get_client(self) -> DevClient:
        return self.client


@dataclass(frozen=True)
class DevLogout:
    """One request to the end-session endpoint, as the provider understood it."""

    client_id: str | None
    sub: str | None
    id_token_hint_valid: bool
    redirected_to: str | None


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, provider: DevIdentityProvider, app: Flask) -> None:
        super().__init__(app, query_client=provider.client, save_token=provider._save_token)
        self.provider = provider


class _RequireS256(CodeChallenge):  # type: ignore[misc]
    """PKCE is mandatory for every client, and only with S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE 'code_challenge' is required.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class _CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        self.server.provider._save_code(code, oauth_request)

    def query_authorization_code(self, code: str, client: DevClient) -> _AuthorizationCode | None:
        return self.server.provider._take_code(code, client)  # type: ignore[no-any-return]

    def delete_authorization_code(self, authorization_code: _AuthorizationCode) -> None:
        # Codes are removed when looked up, so a code can never be redeemed twice.
        return None

    def authenticate_user(self, authorization_code: _AuthorizationCode) -> _Login:
        return authorization_code.login


class _RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def authenticate_refresh_token(self, refresh_token: str) -> _IssuedToken | None:
        return self.server.provider._find_refresh_token(refresh_token)  # type: ignore[no-any-return]

    def authenticate_user(self, refresh_token: _IssuedToken) -> _Login:
        return refresh_token.login

    def issue_token(self, user: _Login, refresh_token: _IssuedToken) -> dict[str, Any]:
        scope = self.request.payload.scope or refresh_token.get_scope()
        return self.generate_token(  # type: ignore[no-any-return]
            user=user,
            scope=scope,
            include_refresh_token=self.server.provider.rotate_refresh_tokens,
        )

    def revoke_old_credential(self, refresh_token: _IssuedToken) -> None:
        if self.server.provider.rotate_refresh_tokens:
            self.server.provider._revoke_refresh_token(refresh_token)


class _IdTokenSigning:
    """The id-token parts Authlib's OpenID extensions leave to the provider."""

    # Authlib asks for the header and the key in two calls; pinning the key per
    # thread keeps kid and signature consistent across a concurrent rotation.
    _pinned = threading.local()

    def __init__(self, provider: DevIdentityProvider) -> None:
        self.provider = provider

    def get_client_algorithm(self, client: DevClient) -> str:
        return SIGNING_ALG

    def get_encode_header(self, client: DevClient) -> dict[str, str]:
        key = self.provider._current_key()
        self._pinned.key = key
        return {"alg": SIGNING_ALG, "kid": key.kid, "typ": "JWT"}

    def resolve_client_private_key(self, client: DevClient) -> dict[str, Any]:
        key: _SigningKey | None = getattr(self._pinned, "key", None)
        self._pinned.key = None
        return dict((key or self.provider._current_key()).private_jwk)

    def get_client_claims(self, client: DevClient) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.provider.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + self.provider.id_token_lifetime,
        }

    def generate_user_info(self, user: _Login, scope: str) -> UserInfo:
        return UserInfo({**user.claims, "sub": user.sub, "auth_time": user.auth_time})


class _OpenIDCode(_IdTokenSigning, OpenIDCode):  # type: ignore[misc]
    def __init__(self, provider: DevIdentityProvider) -> None:
        _IdTokenSigning.__init__(self, provider)
        OpenIDCode.__init__(self, require_nonce=False)

    def exists_nonce(self, nonce: str, oauth_request: Any) -> bool:
        return self.provider._nonce_used(oauth_request.payload.client_id, nonce)


class _OpenIDRefresh(_IdTokenSigning, OpenIDToken):  # type: ignore[misc]
    """A refresh with the ``openid`` scope returns a fresh id token (no nonce)."""


class _Issuer(IssuerParameter):  # type: ignore[misc]
    def __init__(self, provider: DevIdentityProvider) -> None:
        self.provider = provider

    def get_issuer(self) -> str:
        return self.provider.issuer


class _AccessTokens(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, provider: DevIdentityProvider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> _IssuedToken | None:
        return self.provider._find_access_token(token_string)


class _UserInfo(UserInfoEndpoint):  # type: ignore[misc]
    def generate_user_info(self, user: _Login, scope: str) -> UserInfo:
        return UserInfo({**user.claims, "sub": user.sub})

    def get_issuer(self) -> str:
        return self.server.provider.issuer  # type: ignore[no-any-return]

    def resolve_private_key(self) -> dict[str, Any]:
        return dict(self.server.provider._current_key().private_jwk)


class _EndSession(EndSessionEndpoint):  # type: ignore[misc]
    def get_server_jwks(self) -> dict[str, Any]:
        return self.server.provider.jwks()  # type: ignore[no-any-return]

    def get_algorithms(self) -> list[str]:
        return [SIGNING_ALG]

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        claims = end_session_request.id_token_claims or {}
        client = end_session_request.client
        self.server.provider._record_logout(
            DevLogout(
                client_id=client.client_id if client else None,
                sub=claims.get("sub"),
                id_token_hint_valid=end_session_request.id_token_claims is not None,
                redirected_to=end_session_request.redirect_uri,
            )
        )


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto}}
label{{display:block;margin:.4rem 0}}button{{margin:1rem .5rem 0 0}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> Response:
    text = _PAGE.format(title=html.escape(title), body=body)
    return Response(text, status=status, mimetype="text/html")


class DevIdentityProvider:
    """A local OpenID Provider on ``host`` (loopback) and a free port.

    Thread-safe: the server answers on its own threads while a test changes
    users, clients and keys. ``signing_key`` is the current private key as a
    ``cryptography`` ``RSAPrivateKey``; ``public_jwk`` is its public JWK dict
    (``kid``, ``alg``, ``use`` included). Issued id tokens are RS256 and carry
    ``kid``; keys are RSA 2048, drawn from a per-process pool.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        id_token_lifetime: int = 3600,
        access_token_lifetime: int = 3600,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        self.host = host
        self.id_token_lifetime = id_token_lifetime
        self.access_token_lifetime = access_token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.jwks_fetches = 0
        self.token_requests = 0
        self.discovery_fetches = 0
        self.logouts: list[DevLogout] = []
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.RLock()
        self._clients: dict[str, DevClient] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._queued_logins: deque[_Login] = deque()
        self._codes: dict[str, _AuthorizationCode] = {}
        self._tokens: list[_IssuedToken] = []
        self._nonces: set[tuple[str, str]] = set()
        self._key_index = 0
        self._keys: list[_SigningKey] = [_SigningKey.from_key(_pooled_key(0))]
        self._http: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app = self._create_app()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self."""
        with self._lock:
            if self._http is not None:
                return self
            self._http = make_server(
                self.host,
                self._requested_port,
                self.app,
                threaded=True,
                request_handler=_QuietHandler,
            )
            self._port = self._http.server_port
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                # A short poll keeps stop() (which waits for the next poll) quick.
                kwargs={"poll_interval": 0.01},
                name=f"dev-idp-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        with self._lock:
            http, thread = self._http, self._thread
            self._http = self._thread = None
        if http is not None:
            http.shutdown()
            http.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DevIdentityProvider is not started")
        return self._port

    @property
    def issuer(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this provider (``/authorize``, ``/jwks``, ...)."""
        return self.issuer + "/" + path.lstrip("/")

    # -- clients and users -------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
        post_logout_redirect_uris: Iterable[str] = (),
        grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
    ) -> DevClient:
        """Register (or replace) a client; without a secret it is a public client."""
        client = DevClient(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=tuple(redirect_uris),
            post_logout_redirect_uris=tuple(post_logout_redirect_uris),
            grant_types=tuple(grant_types),
        )
        with self._lock:
            self._clients[client_id] = client
        return client

    def client(self, client_id: str) -> DevClient | None:
        with self._lock:
            return self._clients.get(client_id)

    def add_user(self, sub: str, **claims: Any) -> None:
        """Add (or replace) a user shown on the login page; claims go into their tokens."""
        with self._lock:
            self._users[sub] = dict(claims)

    def next_login(self, sub: str, claims: Mapping[str, Any] | None = None) -> None:
        """Queue who signs in at the next ``/authorize``, skipping the login page.

        ``claims`` extend (and override) the known user's claims for this login;
        an unknown ``sub`` signs in with ``claims`` alone.
        """
        with self._lock:
            self._queued_logins.append(self._login_for(sub, claims))

    def revoke_refresh_tokens(self, sub: str) -> int:
        """Make every refresh token of ``sub`` fail with ``invalid_grant``; returns how many."""
        with self._lock:
            live = [t for t in self._tokens if t.login.sub == sub and t.refresh_token]
            live = [t for t in live if not t.refresh_revoked]
            for token in live:
                token.refresh_revoked = True
            return len(live)

    # -- keys --------------------------------------------------------------

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        return self._current_key().private_key

    @property
    def signing_kid(self) -> str:
        return self._current_key().kid

    @property
    def public_jwk(self) -> dict[str, Any]:
        return dict(self._current_key().public_jwk)

    def signing_key_pem(self) -> bytes:
        """The current private key as unencrypted PKCS#8 PEM."""
        return self.signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwks(self) -> dict[str, Any]:
        """The published key set, newest key first."""
        with self._lock:
            return {"keys": [dict(k.public_jwk) for k in reversed(self._keys)]}

    def rotate_keys(self, drop_old: bool = False) -> str:
        """Sign with a new key from now on and return its kid.

        The old keys stay in the JWKS unless ``drop_old``.
        """
        with self._lock:
            self._key_index += 1
            key = _SigningKey.from_key(_pooled_key(self._key_index))
            self._keys = [key] if drop_old else [*self._keys, key]
            return key.kid

    def mint_id_token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        audience: str | list[str] | None = None,
        headers: Mapping[str, Any] | None = None,
        kid: str | None = None,
        alg: str = SIGNING_ALG,
        key: Any = None,
        lifetime: int = 300,
        omit: Iterable[str] = (),
    ) -> str:
        """Sign an id token directly, as the mobile flows receive them.

        Defaults: ``iss`` this issuer, ``sub`` the first added user (with that
        user's claims; a ``sub`` in ``claims`` naming a known user brings that
        user's claims), ``aud`` the first registered client, ``iat`` now,
        ``exp`` now + ``lifetime``. ``claims`` override the defaults and
        ``omit`` removes claims afterwards. The header is ``alg``, ``typ``
        and ``kid`` (the current key's unless ``kid`` is given), then
        ``headers`` merged in; a header value of None removes that member.
        ``key`` signs instead of the current key: a ``cryptography`` private
        key, a JWK dict, PEM bytes, or for ``HS*`` the raw secret (any bytes
        or str, PEM included, so algorithm-confusion tokens can be made);
        ``alg="none"`` makes an unsigned token.
        """
        claims = dict(claims or {})
        with self._lock:
            current = self._current_key()
            sub = claims.get("sub") or next(iter(self._users), None)
            if sub is None:
                raise ValueError("mint_id_token needs a sub: add a user or pass claims['sub']")
            base = dict(self._users.get(sub, {}))
            if audience is None:
                audience = next(iter(self._clients), None)
            if audience is None:
                raise ValueError("mint_id_token needs an audience: register a client first")
        now = int(time.time())
        payload: dict[str, Any] = {
            **base,
            "iss": self.issuer,
            "sub": sub,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            **claims,
        }
        for name in omit:
            payload.pop(name, None)
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid or current.kid}
        header.update(headers or {})
        header = {name: value for name, value in header.items() if value is not None}
        return _sign_compact(header, payload, alg, current.private_key if key is None else key)

    # -- internals used by the Authlib classes -----------------------------

    def _current_key(self) -> _SigningKey:
        with self._lock:
            return self._keys[-1]

    def _login_for(self, sub: str, claims: Mapping[str, Any] | None = None) -> _Login:
        with self._lock:
            merged = {**self._users.get(sub, {}), **(claims or {})}
        merged.pop("sub", None)
        return _Login(sub=sub, claims=merged, auth_time=int(time.time()))

    def _peek_queued_login(self) -> _Login | None:
        with self._lock:
            return self._queued_logins[0] if self._queued_logins else None

    def _consume_queued_login(self, login: _Login) -> None:
        with self._lock:
            if self._queued_logins and self._queued_logins[0] is login:
                self._queued_logins.popleft()

    def _save_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        entry = _AuthorizationCode(
            code=code,
            client_id=oauth_request.client.client_id,
            redirect_uri=oauth_request.payload.redirect_uri,
            scope=oauth_request.scope,
            login=oauth_request.user,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            expires_at=time.time() + AUTHORIZATION_CODE_LIFETIME,
        )
        with self._lock:
            self._codes[code] = entry
            if entry.nonce:
                self._nonces.add((entry.client_id, entry.nonce))

    def _take_code(self, code: str, client: DevClient) -> _AuthorizationCode | None:
        with self._lock:
            entry = self._codes.pop(code, None)
        if entry is None or entry.client_id != client.client_id or time.time() > entry.expires_at:
            return None
        return entry

    def _nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return (client_id, nonce) in self._nonces

    def _save_token(self, token: Mapping[str, Any], oauth_request: Any) -> None:
        issued = _IssuedToken(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client=oauth_request.client,
            scope=token.get("scope", ""),
            login=oauth_request.user,
            issued_at=time.time(),
            expires_in=int(token.get("expires_in", self.access_token_lifetime)),
        )
        with self._lock:
            self._tokens.append(issued)

    def _find_access_token(self, access_token: str) -> _IssuedToken | None:
        with self._lock:
            for token in self._tokens:
                if hmac.compare_digest(token.access_token, access_token):
                    return token
        return None

    def _find_refresh_token(self, refresh_token: str) -> _IssuedToken | None:
        with self._lock:
            for token in self._tokens:
                if token.refresh_token and not token.refresh_revoked:
                    if hmac.compare_digest(token.refresh_token, refresh_token):
                        return token
        return None

    def _revoke_refresh_token(self, token: _IssuedToken) -> None:
        with self._lock:
            token.refresh_revoked = True

    def _record_logout(self, logout: DevLogout) -> None:
        with self._lock:
            self.logouts.append(logout)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    # -- HTTP --------------------------------------------------------------

    def _discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "jwks_uri": self.url("/jwks"),
            "userinfo_endpoint": self.url("/userinfo"),
            "end_session_endpoint": self.url("/logout"),
            "scopes_supported": list(SCOPES_SUPPORTED),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [SIGNING_ALG],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
        }

    def _create_app(self) -> Flask:
        app = Flask(__name__)
        app.config.update(
            OAUTH2_REFRESH_TOKEN_GENERATOR=True,
            OAUTH2_TOKEN_EXPIRES_IN={
                "authorization_code": self.access_token_lifetime,
                "refresh_token": self.access_token_lifetime,
            },
            OAUTH2_SCOPES_SUPPORTED=list(SCOPES_SUPPORTED),
        )
        server = _Server(self, app)
        server.register_grant(_CodeGrant, [_RequireS256(required=True), _OpenIDCode(self)])
        server.register_grant(_RefreshGrant, [_OpenIDRefresh(self)])
        issuer_parameter = _Issuer(self)
        server.register_extension(issuer_parameter)
        protector = ResourceProtector()
        protector.register_token_validator(_AccessTokens(self))
        server.register_endpoint(_UserInfo(resource_protector=protector))
        server.register_endpoint(_EndSession)

        def error_response(error: OAuth2Error) -> Response:
            response: Response = server.handle_error_response(None, error)
            issuer_parameter.add_issuer_parameter(server, response)
            return response

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            self._count("discovery_fetches")
            return self._discovery_document()

        @app.get("/jwks")
        def jwks() -> Any:
            self._count("jwks_fetches")
            return self.jwks()

        @app.post("/token")
        def token() -> Any:
            self._count("token_requests")
            return server.create_token_response()

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Any:
            return server.create_endpoint_response("userinfo")

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Any:
            queued: _Login | None = None
            login: _Login | None = None
            if request.method == "POST":
                if request.form.get("action") != "cancel":
                    sub = request.form.get("user", "")
                    with self._lock:
                        known = sub in self._users
                    if not known:
                        return _page("Sign in", "<p>Choose a user to sign in.</p>", 400)
                    login = self._login_for(sub)
            else:
                queued = login = self._peek_queued_login()
            try:
                grant = server.get_consent_grant(end_user=login)
            except OAuth2Error as error:
                return error_response(error)
            if request.method == "GET" and login is None:
                return self._login_page()
            if queued is not None:
                self._consume_queued_login(queued)
            return server.create_authorization_response(grant_user=login, grant=grant)

        @app.post("/dev/id-token")
        def dev_id_token() -> Any:
            # What a mobile app's own sign-in SDK would hand it: the demo's curl walkthrough
            # and the benchmark use it. Only known users, only registered clients.
            sub = request.form.get("sub", "")
            client_id = request.form.get("client_id", "")
            with self._lock:
                known = sub in self._users and client_id in self._clients
            if not known:
                return {"error": "unknown user or client"}, 400
            claims: dict[str, Any] = {"sub": sub}
            if request.form.get("nonce"):
                claims["nonce"] = request.form["nonce"]
            return {"id_token": self.mint_id_token(claims, audience=client_id)}

        @app.route("/logout", methods=["GET", "POST"])
        def logout() -> Any:
            try:
                end_session = server.validate_endpoint_request("end_session")
            except OAuth2Error as error:
                return error_response(error)
            response = server.create_endpoint_response("end_session", end_session)
            return response or _page("Signed out", "<p>You are signed out.</p>")

        return app

    def _login_page(self) -> Response:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
            for name, value in request.args.items(multi=True)
        )
        with self._lock:
            users = list(self._users.items())
        choices = "".join(
            '<label><input type="radio" name="user" value="{sub}"{checked}> {label}</label>'.format(
                sub=html.escape(sub),
                checked=" checked" if index == 0 else "",
                label=html.escape(
                    " - ".join(str(claims[k]) for k in ("name", "email") if k in claims) or sub
                ),
            )
            for index, (sub, claims) in enumerate(users)
        )
        sign_in_state = "" if users else " disabled"
        body = (
            f'<form method="post" action="{html.escape(self.url("/authorize"))}">'
            f"{hidden}{choices or '<p>No users.</p>'}"
            f'<button type="submit" name="action" value="sign_in"{sign_in_state}>Sign in</button>'
            '<button type="submit" name="action" value="cancel">Cancel</button>'
            "</form>"
        )
        return _page("Sign in to the development identity provider", body)


def _sign_compact(header: Mapping[str, Any], payload: Mapping[str, Any], alg: str, key: Any) -> str:
    """Compact JWS of ``payload``; the key is used as given so tests can forge tokens."""
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    ).encode("ascii")
    if alg == "none":
        signature = b""
    else:
        algorithm = get_default_algorithms()[alg]
        if alg.startswith("HS"):
            if not isinstance(key, str | bytes):
                raise TypeError(f"{alg} needs a str or bytes secret as key")
            # Skips PyJWT's prepare_key, which refuses PEM secrets that
            # algorithm-confusion tests need to use.
            secret = key.encode() if isinstance(key, str) else key
            signature = hmac.new(secret, signing_input, getattr(hashlib, f"sha{alg[2:]}")).digest()
        elif isinstance(key, Mapping):
            signature = algorithm.sign(signing_input, algorithm.from_jwk(json.dumps(dict(key))))
        elif isinstance(key, str | bytes):
            signature = algorithm.sign(signing_input, algorithm.prepare_key(key))
        else:
            signature = algorithm.sign(signing_input, key)
    return f"{signing_input.decode('ascii')}.{_b64url(signature)}"
