"""The consumer and AWS identity providers: Google, Apple, Cognito user pools (id tokens,
verified locally) and Facebook, Login with Amazon (access tokens, verified at the
provider's token-inspection endpoint).

An access token proves only that *some* app was given access to the user. The
inspection result must name this broker's app (``app_id`` / ``aud``) and say the token
is valid; a token a user gave to another app never signs them in here. Access tokens
and app secrets never appear in logs or error messages: requests errors, whose text
holds the URL with its query string, are replaced rather than chained.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import requests

from identity.config import (
    AmazonProvider,
    AppleProvider,
    BrokerConfig,
    CognitoUserPoolProvider,
    FacebookProvider,
    GoogleProvider,
)
from identity.errors import InvalidToken, UpstreamError
from identity.http import no_answer, read_capped, upstream_session
from identity.models import Principal
from identity.providers.oidc import IdTokenProvider, login_key_for_issuer
from identity.tokens import JwksCache

# Cognito identity pool Logins keys (the user pool's is built from its id).
GOOGLE_LOGIN_KEY: Final = "accounts.google.com"
APPLE_LOGIN_KEY: Final = "appleid.apple.com"
FACEBOOK_LOGIN_KEY: Final = "graph.facebook.com"
AMAZON_LOGIN_KEY: Final = "www.amazon.com"
ID_TOKEN_USE: Final = "id"  # noqa: S105 -- the token_use claim value Cognito id tokens carry
FACEBOOK_PROFILE_FIELDS: Final = "id,name,email"

MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_ACCESS_TOKEN_CHARS: Final = 4096
# Apple sends these as the strings "true" / "false" (OIDC says booleans).
APPLE_BOOLEAN_CLAIMS: Final = ("email_verified", "is_private_email")
# Login with Amazon documents tokeninfo's ``exp`` as seconds remaining; a value this
# large can only be an absolute time, so it is read as one.
_EPOCH_SECONDS_FLOOR: Final = 1_000_000_000


# ---------------------------------------------------------------------------------------
# id tokens


def google_issuers(issuer: str) -> tuple[str, ...]:
    """Google signs ``iss`` both with and without ``https://``: accept both spellings
    (``http://`` is stripped likewise for a loopback issuer in tests)."""
    bare = login_key_for_issuer(issuer)
    return (issuer,) if bare == issuer else (issuer, bare)


def cognito_user_pool_region(user_pool_id: str, default: str) -> str:
    """A user pool id starts with its region (``us-east-1_AbC123``)."""
    region, sep, _ = user_pool_id.partition("_")
    return region if sep and region else default


def cognito_user_pool_login_key(region: str, user_pool_id: str) -> str:
    """The ``Logins`` key of a user pool: ``cognito-idp.{region}.amazonaws.com/{pool}``."""
    return f"cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def normalise_apple_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """Apple's ``"true"``/``"false"`` strings become booleans; any other non-boolean value
    of those claims refuses the token rather than guessing."""
    normalised = dict(claims)
    for name in APPLE_BOOLEAN_CLAIMS:
        if name not in normalised:
            continue
        value = normalised[name]
        if isinstance(value, bool):
            continue
        if value == "true":
            normalised[name] = True
        elif value == "false":
            normalised[name] = False
        else:
            raise InvalidToken(
                f"malformed claim '{name}'", log_detail=f"{name} is {type(value).__name__}"
            )
    return normalised


def _keys(jwks_url: str, config: BrokerConfig) -> JwksCache:
    timeouts = config.aws.timeouts
    return JwksCache(
        jwks_url=jwks_url, connect_timeout=timeouts.connect, read_timeout=timeouts.read
    )


def build_google(provider: GoogleProvider, config: BrokerConfig) -> IdTokenProvider:
    """Google id tokens: ``aud`` one of ``client_ids`` (``azp`` too when ``aud`` lists
    several), ``iss`` with or without its scheme."""
    return IdTokenProvider(
        name=provider.name,
        kind="google",
        issuers=google_issuers(provider.issuer),
        audiences=provider.client_ids,
        keys=_keys(provider.jwks_url, config),
        login_key=GOOGLE_LOGIN_KEY,
        leeway=provider.leeway,
        require_nonce=provider.require_nonce,
    )


def build_apple(provider: AppleProvider, config: BrokerConfig) -> IdTokenProvider:
    """Sign in with Apple id tokens: ``aud`` one of ``client_ids`` (bundle or services
    ids); ``email_verified`` / ``is_private_email`` normalised to booleans."""
    return IdTokenProvider(
        name=provider.name,
        kind="apple",
        issuers=(provider.issuer,),
        audiences=provider.client_ids,
        keys=_keys(provider.jwks_url, config),
        login_key=APPLE_LOGIN_KEY,
        leeway=provider.leeway,
        require_nonce=provider.require_nonce,
        claims_hook=normalise_apple_claims,
    )


def build_cognito_user_pool(
    provider: CognitoUserPoolProvider, config: BrokerConfig
) -> IdTokenProvider:
    """Cognito user pool id tokens (``token_use`` must be ``id``: access tokens are
    refused), ``aud`` one of the app ``client_ids``. The ``Logins`` key always names the
    pool, whatever issuer is configured."""
    region = cognito_user_pool_region(provider.user_pool_id, config.aws.region)
    return IdTokenProvider(
        name=provider.name,
        kind="cognito_user_pool",
        issuers=(provider.issuer,),
        audiences=provider.client_ids,
        keys=_keys(provider.jwks_url, config),
        login_key=cognito_user_pool_login_key(region, provider.user_pool_id),
        leeway=provider.leeway,
        require_nonce=provider.require_nonce,
        allowed_token_use=ID_TOKEN_USE,
    )


# ---------------------------------------------------------------------------------------
# access tokens


class InspectionClient:
    """JSON GETs to a provider's token-inspection and profile APIs.

    One ``requests.Session`` (connection pool) per provider, explicit timeouts, no
    retries, no redirects. Failures map to broker errors: unreachable →
    ``UpstreamUnavailable``, timeout → ``UpstreamTimeout``, 400/401 → ``InvalidToken``
    (the token was refused), 5xx, other statuses, a body over 1 MiB or not a JSON object
    → ``UpstreamError``. Neither the query string nor the headers are ever logged.
    """

    def __init__(
        self,
        *,
        provider: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._provider = provider
        self._timeouts = (connect_timeout, read_timeout)
        self._max_response_bytes = max_response_bytes
        self._session = upstream_session(pool_maxsize=64)

    def get_json(
        self,
        url: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """``GET url`` and return the JSON object it answers with (HTTP 200 only)."""
        where = _without_query(url)
        request_headers = {"Accept": "application/json", **(headers or {})}
        # Errors raised inside this block are replaced (``from None``): their text and
        # their causes hold the full URL, query string included.
        try:
            with self._session.get(
                url,
                params=params,
                headers=request_headers,
                timeout=self._timeouts,
                stream=True,
                allow_redirects=False,
            ) as response:
                status = response.status_code
                body = read_capped(response, self._max_response_bytes)
        except requests.RequestException as e:
            raise no_answer(
                e, upstream=f"{self._provider}: {what}", where=f"{what} {where}"
            ) from None
        if status in (400, 401):
            raise InvalidToken(
                "token refused by the identity provider",
                log_detail=f"{what} {where} answered HTTP {status}: {_error_summary(body)}",
            )
        if status != 200:
            raise UpstreamError(
                f"{self._provider}: {what} failed",
                log_detail=f"{what} {where} answered HTTP {status}: {_error_summary(body)}",
            )
        if body is None:
            raise UpstreamError(
                f"{self._provider}: {what} answer too large",
                log_detail=f"{what} {where}: body over {self._max_response_bytes} bytes",
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise UpstreamError(
                f"{self._provider}: {what} answer is not JSON",
                log_detail=f"{what} {where}: body is not JSON",
            ) from None
        if not isinstance(document, dict):
            raise UpstreamError(
                f"{self._provider}: {what} answer is not a JSON object",
                log_detail=f"{what} {where}: body is not a JSON object",
            )
        return document


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _error_summary(body: bytes | None) -> str:
    """The provider's error code and type from an error body, for the log only.

    Messages are left out: a provider may echo the token back in them.
    """
    try:
        document = json.loads(body or b"")
    except (ValueError, RecursionError):
        return "no JSON error body"
    if not isinstance(document, dict):
        return "no JSON error body"
    error = document.get("error")
    if isinstance(error, dict):  # Graph API: {"error": {"type", "code", "message"}}
        return f"type={_short(error.get('type'))} code={_short(error.get('code'))}"
    return f"error={_short(error)}"  # OAuth 2.0: {"error": "invalid_token", ...}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_access_token_shape(access_token: str) -> None:
    """Refuse anything that is not a plausible bearer token before sending it anywhere."""
    if (
        not isinstance(access_token, str)
        or not 0 < len(access_token) <= MAX_ACCESS_TOKEN_CHARS
        or not access_token.isascii()
        or not access_token.isprintable()
        or any(ch.isspace() for ch in access_token)
    ):
        raise InvalidToken("malformed token", log_detail="access token fails the shape check")


def _string(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) and value else None


def _profile_claims(subject: str, profile: Mapping[str, Any]) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": subject}
    for name in ("name", "email"):
        value = _string(profile, name)
        if value is not None:
            claims[name] = value
    return claims


class AccessTokenProvider:
    """Shared shape of the access-token kinds: they take access tokens only."""

    accepts_id_token = False
    accepts_access_token = True

    def __init__(self, *, name: str, kind: str) -> None:
        self._name = name
        self._kind = kind

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> Principal:
        """Refused: this provider's mobile clients present access tokens."""
        raise InvalidToken(f"provider {self._name!r} takes an access_token, not an id_token")


class FacebookTokenProvider(AccessTokenProvider):
    """Facebook Login user access tokens, checked with the Graph API's ``debug_token``
    (with this app's app access token) and read with ``/me``."""

    def __init__(
        self,
        *,
        name: str,
        app_id: str,
        app_secret: str,
        issuer: str,
        debug_token_url: str,
        userinfo_url: str | None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, kind="facebook")
        self.app_id = app_id
        self._app_secret = app_secret
        self.issuer = issuer
        self.debug_token_url = debug_token_url
        self.userinfo_url = userinfo_url
        query = parse_qs(urlsplit(userinfo_url).query) if userinfo_url is not None else {}
        self._profile_fields = None if "fields" in query else FACEBOOK_PROFILE_FIELDS
        self._api = InspectionClient(
            provider=name, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"FacebookTokenProvider(name={self._name!r}, app_id={self.app_id!r})"

    def verify_access_token(self, access_token: str) -> Principal:
        """Valid, issued to ``app_id``, not expired, of a user: the user's principal."""
        _check_access_token_shape(access_token)
        inspection = self._api.get_json(
            self.debug_token_url,
            what="debug_token",
            params={
                "input_token": access_token,
                "access_token": f"{self.app_id}|{self._app_secret}",
            },
        )
        data = inspection.get("data")
        if not isinstance(data, dict):
            raise UpstreamError(
                f"{self._name}: debug_token answer has no data",
                log_detail="debug_token answer without a 'data' object",
            )
        if data.get("is_valid") is not True:
            raise InvalidToken("token is not valid", log_detail="debug_token: is_valid is not true")
        if data.get("app_id") != self.app_id:
            raise InvalidToken(
                "token was issued to another app",
                log_detail=f"debug_token: app_id {_short(data.get('app_id'))}",
            )
        if data.get("type", "USER") != "USER":
            raise InvalidToken(
                "not a user access token", log_detail=f"debug_token: type {_short(data['type'])}"
            )
        expires_at = data.get("expires_at", 0)
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise UpstreamError(
                f"{self._name}: debug_token answer is malformed",
                log_detail="debug_token: expires_at is not an integer",
            )
        # 0 means the token never expires.
        if expires_at != 0 and expires_at <= self._clock():
            raise InvalidToken("token expired", log_detail="debug_token: expires_at has passed")
        user_id = _string(data, "user_id")
        if user_id is None:
            raise InvalidToken("token names no user", log_detail="debug_token: no user_id")

        return Principal(
            provider=self._name,
            issuer=self.issuer,
            subject=user_id,
            claims=_profile_claims(user_id, self._profile(access_token, user_id)),
            login_key=FACEBOOK_LOGIN_KEY,
            login_token=access_token,
            token_expires_at=datetime.fromtimestamp(expires_at, UTC) if expires_at else None,
        )

    def _profile(self, access_token: str, user_id: str) -> Mapping[str, Any]:
        if self.userinfo_url is None:
            return {}
        params = {"appsecret_proof": self._appsecret_proof(access_token)}
        if self._profile_fields is not None:
            params["fields"] = self._profile_fields
        profile = self._api.get_json(
            self.userinfo_url,
            what="profile",
            params=params,
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if profile.get("id") != user_id:
            raise UpstreamError(
                f"{self._name}: profile does not match the token",
                log_detail="profile id differs from debug_token user_id",
            )
        return profile

    def _appsecret_proof(self, access_token: str) -> str:
        # Graph API calls signed with the app secret: a stolen token alone cannot make them
        # when the app requires proofs.
        return hmac.new(
            self._app_secret.encode("utf-8"), access_token.encode("utf-8"), hashlib.sha256
        ).hexdigest()


class AmazonTokenProvider(AccessTokenProvider):
    """Login with Amazon access tokens, checked at ``tokeninfo`` and read from the
    profile API."""

    def __init__(
        self,
        *,
        name: str,
        client_ids: tuple[str, ...],
        issuer: str,
        tokeninfo_url: str,
        userinfo_url: str | None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, kind="amazon")
        self.client_ids = frozenset(client_ids)
        self.issuer = issuer
        self.tokeninfo_url = tokeninfo_url
        self.userinfo_url = userinfo_url
        self._api = InspectionClient(
            provider=name, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"AmazonTokenProvider(name={self._name!r}, client_ids={sorted(self.client_ids)!r})"

    def verify_access_token(self, access_token: str) -> Principal:
        """Known to tokeninfo, ``aud`` (or ``app_id``) one of ``client_ids``, not expired:
        the user's principal."""
        _check_access_token_shape(access_token)
        info = self._api.get_json(
            self.tokeninfo_url, what="tokeninfo", params={"access_token": access_token}
        )
        granted = {v for v in (info.get("aud"), info.get("app_id")) if isinstance(v, str)}
        if not granted & self.client_ids:
            raise InvalidToken(
                "token was issued to another app",
                log_detail=f"tokeninfo: aud {_short(info.get('aud'))}",
            )
        user_id = _string(info, "user_id")
        if user_id is None:
            raise InvalidToken("token names no user", log_detail="tokeninfo: no user_id")
        now = self._clock()
        exp = info.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int):
            raise UpstreamError(
                f"{self._name}: tokeninfo answer is malformed",
                log_detail="tokeninfo: exp is not an integer",
            )
        expires_at = exp if exp >= _EPOCH_SECONDS_FLOOR else now + exp
        if expires_at <= now:
            raise InvalidToken("token expired", log_detail="tokeninfo: exp has passed")

        return Principal(
            provider=self._name,
            issuer=self.issuer,
            subject=user_id,
            claims=_profile_claims(user_id, self._profile(access_token, user_id)),
            login_key=AMAZON_LOGIN_KEY,
            login_token=access_token,
            token_expires_at=datetime.fromtimestamp(expires_at, UTC),
        )

    def _profile(self, access_token: str, user_id: str) -> Mapping[str, Any]:
        if self.userinfo_url is None:
            return {}
        profile = self._api.get_json(
            self.userinfo_url,
            what="profile",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if profile.get("user_id") != user_id:
            raise UpstreamError(
                f"{self._name}: profile does not match the token",
                log_detail="profile user_id differs from tokeninfo user_id",
            )
        return profile


def build_facebook(provider: FacebookProvider, config: BrokerConfig) -> FacebookTokenProvider:
    """Facebook Login access tokens, inspected at ``debug_token_url``.

    Raises ``ValueError`` for ``require_nonce``: access tokens carry no nonce, and Limited
    Login id tokens (which do) are not taken.
    """
    if provider.require_nonce:
        raise ValueError(
            "require_nonce: Facebook access tokens carry no nonce "
            "(Limited Login id tokens are not supported)"
        )
    timeouts = config.aws.timeouts
    return FacebookTokenProvider(
        name=provider.name,
        app_id=provider.app_id,
        app_secret=provider.app_secret.get_secret_value(),
        issuer=provider.issuer,
        debug_token_url=provider.debug_token_url,
        userinfo_url=provider.userinfo_url,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )


def build_amazon(provider: AmazonProvider, config: BrokerConfig) -> AmazonTokenProvider:
    """Login with Amazon access tokens, inspected at ``tokeninfo_url``."""
    timeouts = config.aws.timeouts
    return AmazonTokenProvider(
        name=provider.name,
        client_ids=provider.client_ids,
        issuer=provider.issuer,
        tokeninfo_url=provider.tokeninfo_url,
        userinfo_url=provider.userinfo_url,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
