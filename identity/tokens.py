"""JWT verification: the one ``verify_jwt()`` every id token in the broker goes through.

Algorithms are pinned per provider and never taken from the token; the signing key
comes only from the provider's JWKS (cached, kid -> key) or from a configured shared
secret, never from the token header (``jwk``, ``jku``, ``x5u``, ``x5c`` are ignored).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import requests
from jwt.algorithms import AllowedPublicKeys

from identity.discovery import OidcDiscovery, endpoint, is_https_or_loopback
from identity.errors import BrokerError, InvalidToken, UpstreamTimeout, UpstreamUnavailable
from identity.http import no_answer, read_capped, upstream_session

logger = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
SYMMETRIC_ALGORITHMS = frozenset({"HS256"})

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# EdDSA means Ed25519 here: Ed448 keys are not used.
_OKP_CURVES = frozenset({"Ed25519"})
_HEADER_KEY_PARAMETERS = ("jwk", "jku", "x5u", "x5c")

# Three unpadded base64url segments: anything else is refused before it is decoded.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

_MIN_SHARED_SECRET_BYTES = 32


@dataclass(frozen=True)
class SigningKey:
    """A verification key and the algorithms it may verify."""

    kid: str | None
    algorithms: frozenset[str]
    key: AllowedPublicKeys | bytes


class SharedSecret:
    """An HMAC secret (HS256, e.g. for guest invites); at least 32 bytes, never printed."""

    __slots__ = ("_signing_key",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SHARED_SECRET_BYTES:
            raise ValueError(f"a shared secret needs at least {_MIN_SHARED_SECRET_BYTES} bytes")
        self._signing_key = SigningKey(kid=None, algorithms=SYMMETRIC_ALGORITHMS, key=secret)

    def __repr__(self) -> str:
        return "SharedSecret(<hidden>)"

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms tokens under this secret may use."""
        return SYMMETRIC_ALGORITHMS

    def signing_key(self, kid: str | None) -> SigningKey:
        """The secret, whatever ``kid`` the token names."""
        return self._signing_key


@dataclass(frozen=True)
class JwtPolicy:
    """What one provider's tokens must satisfy.

    ``max_iat_future`` defaults to ``leeway``; ``exp`` is required, whatever
    ``required_claims`` says, unless ``require_exp`` is false (a signed userinfo
    response, which OIDC Core does not give an ``exp``). HS256 is only for a
    ``SharedSecret`` and never shares a policy with asymmetric algorithms.
    """

    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: int = 60
    max_iat_future: int | None = None
    max_age: int | None = None
    required_claims: tuple[str, ...] = ("iss", "sub", "aud", "exp", "iat")
    require_nonce: bool = False
    max_token_bytes: int = 16 * 1024
    allowed_token_use: str | None = None
    check_azp: bool = True
    require_exp: bool = True

    def __post_init__(self) -> None:
        for name in ("issuers", "audiences", "algorithms"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"JwtPolicy.{name} must be a non-empty tuple")
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"JwtPolicy.{name} must hold non-empty strings")
        algorithms = set(self.algorithms)
        unknown = algorithms - ASYMMETRIC_ALGORITHMS - SYMMETRIC_ALGORITHMS
        if unknown:
            raise ValueError(f"JwtPolicy.algorithms: not allowed: {sorted(unknown)}")
        if algorithms & SYMMETRIC_ALGORITHMS and algorithms & ASYMMETRIC_ALGORITHMS:
            raise ValueError(
                "JwtPolicy.algorithms: HS256 cannot be mixed with public-key algorithms"
            )
        if not isinstance(self.required_claims, tuple):
            raise ValueError("JwtPolicy.required_claims must be a tuple")
        for name in ("leeway", "max_iat_future", "max_age"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"JwtPolicy.{name} must not be negative")
        if self.max_token_bytes <= 0:
            raise ValueError("JwtPolicy.max_token_bytes must be positive")


class JwksCache:
    """A provider's signing keys, fetched once and kept in a kid -> key map.

    Give ``jwks_url``, or ``issuer`` to resolve ``jwks_uri`` from the issuer's discovery
    document (or ``discovery``, the provider's ``OidcDiscovery`` shared with its browser
    login, so that the document is fetched once). With discovery and ``follow_discovery``,
    the algorithms in use are ``algorithms`` narrowed to those the discovery document advertises
    (``id_token_signing_alg_values_supported``; RS256 when it says nothing, as OIDC
    Discovery makes RS256 the one every provider supports). Keys are refetched after
    ``ttl`` seconds; an unknown kid triggers at most one refetch per
    ``min_refresh_interval``, and a failed fetch is not retried before that interval has
    passed either. While fetches fail, cached keys are served however
    old; with none cached, ``UpstreamUnavailable`` (``UpstreamTimeout`` on a timeout).
    Only keys usable with ``algorithms`` are kept; keys whose ``use`` is not ``sig`` are
    skipped. Thread-safe: one fetch at a time, and callers that waited for it use its
    result instead of fetching again.
    """

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        issuer: str | None = None,
        discovery: OidcDiscovery | None = None,
        algorithms: tuple[str, ...] = ("RS256",),
        follow_discovery: bool = False,
        session: requests.Session | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        ttl: float = 3600.0,
        min_refresh_interval: float = 60.0,
        max_document_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if discovery is not None:
            if issuer is not None:
                raise ValueError("give issuer or discovery, not both")
            issuer = discovery.issuer
        if (jwks_url is None) == (issuer is None):
            raise ValueError("give exactly one of jwks_url and issuer")
        for url in (jwks_url, issuer):
            if url is not None:
                _require_https_or_loopback(url)
        if not set(algorithms) <= ASYMMETRIC_ALGORITHMS:
            raise ValueError("a JWKS serves public keys: algorithms must be asymmetric")
        if follow_discovery and issuer is None:
            raise ValueError("follow_discovery needs issuer")
        self._follow_discovery = follow_discovery
        self._jwks_url = jwks_url
        self._algorithms = frozenset(algorithms)
        self._session = (
            session if session is not None else upstream_session(pool_maxsize=4, operation="jwks")
        )
        self._timeouts = (connect_timeout, read_timeout)
        if discovery is None and issuer is not None:
            discovery = OidcDiscovery(
                issuer,
                session=self._session,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        self._provider_metadata = discovery
        self._ttl = ttl
        self._min_refresh_interval = min_refresh_interval
        self._max_document_bytes = max_document_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: _KeySet | None = None
        # Bumped when a fetch attempt ends, so callers that waited on the lock see it happened.
        self._generation = 0
        self._fetch_count = 0
        self._last_unknown_kid_refresh: float | None = None
        self._failure: _FetchFailure | None = None

    @property
    def fetch_count(self) -> int:
        """How many times the JWKS document has been requested (discovery not counted)."""
        return self._fetch_count

    def discovery(self) -> Mapping[str, Any] | None:
        """The issuer's discovery document once fetched (``None`` when built from a URL)."""
        metadata = self._provider_metadata
        return metadata.cached() if metadata is not None else None

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms in use: the pinned ones, narrowed by discovery once it is read."""
        return self._algorithms

    def signing_key(self, kid: str | None) -> SigningKey | None:
        """The key for ``kid`` (``None``: the set's only key), fetching when needed.

        Returns ``None`` for a kid the provider does not publish.
        """
        # Read the generation before the keys: a fetch finishing in between then shows.
        generation = self._generation
        keys = self._keys
        if keys is not None and self._clock() - keys.fetched_at < self._ttl:
            found = keys.find(kid)
            if found is not None:
                return found
            return self._refresh_and_find(kid, unknown_kid=True, seen_generation=generation)
        return self._refresh_and_find(kid, unknown_kid=False, seen_generation=generation)

    def _refresh_and_find(
        self, kid: str | None, *, unknown_kid: bool, seen_generation: int
    ) -> SigningKey | None:
        with self._lock:
            now = self._clock()
            if self._generation == seen_generation and self._may_fetch(now, unknown_kid):
                if unknown_kid:
                    self._last_unknown_kid_refresh = now
                self._fetch(now)
            keys = self._keys
            found = keys.find(kid) if keys is not None else None
            if found is not None:
                return found
            if self._failure is not None:
                # Cannot tell an unknown kid from a rotated key while the JWKS is unreachable.
                raise self._failure.error(now, self._min_refresh_interval)
            return None

    def _may_fetch(self, now: float, unknown_kid: bool) -> bool:
        interval = self._min_refresh_interval
        if self._failure is not None and now - self._failure.at < interval:
            return False
        last_forced = self._last_unknown_kid_refresh
        return not (unknown_kid and last_forced is not None and now - last_forced < interval)

    def _fetch(self, now: float) -> None:
        try:
            jwks_url = self._resolve_jwks_url()
            self._fetch_count += 1
            document = self._get_json(jwks_url, "JWKS")
            self._keys = _KeySet.parse(document, self._algorithms, fetched_at=now)
            self._failure = None
        except (UpstreamUnavailable, UpstreamTimeout) as e:
            self._failure = _FetchFailure(type(e), e.log_detail or e.detail, at=now)
            logger.warning(
                "signing keys fetch failed (%s); %s",
                e.log_detail,
                "serving cached keys" if self._keys is not None else "no cached keys",
            )
        finally:
            # Only after the outcome is in place, so a reader that sees the new
            # generation also sees the new keys or failure.
            self._generation += 1

    def _resolve_jwks_url(self) -> str:
        if self._jwks_url is not None:
            return self._jwks_url
        metadata = self._provider_metadata
        assert metadata is not None  # __init__: a jwks_url or a discovery document
        document = metadata()
        jwks_uri = endpoint(document, "jwks_uri")
        if jwks_uri is None:
            raise UpstreamUnavailable(
                log_detail=f"discovery document at {metadata.url}: unusable jwks_uri"
            )
        if self._follow_discovery:
            self._algorithms = _advertised_algorithms(document, self._algorithms, metadata.url)
        self._jwks_url = jwks_uri
        return jwks_uri

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            with self._session.get(
                url,
                timeout=self._timeouts,
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as response:
                if response.status_code != 200:
                    raise UpstreamUnavailable(
                        log_detail=f"{what} {url} answered HTTP {response.status_code}"
                    )
                body = read_capped(response, self._max_document_bytes)
        except requests.RequestException as e:
            raise no_answer(e, upstream="the identity provider", where=f"{what} {url}") from e
        if body is None:
            raise UpstreamUnavailable(
                log_detail=f"{what} {url} is over {self._max_document_bytes} bytes"
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise UpstreamUnavailable(log_detail=f"{what} {url} is not JSON") from e
        if not isinstance(document, dict):
            raise UpstreamUnavailable(log_detail=f"{what} {url} is not a JSON object")
        return document


def _advertised_algorithms(
    document: Mapping[str, Any], pinned: frozenset[str], url: str
) -> frozenset[str]:
    """``pinned`` narrowed to the id token algorithms ``document`` advertises."""
    advertised = document.get("id_token_signing_alg_values_supported")
    if advertised is None:
        advertised = ["RS256"]
    if not isinstance(advertised, list):
        raise UpstreamUnavailable(
            log_detail=f"discovery document at {url}: unusable id_token_signing_alg_values"
        )
    usable = pinned & {a for a in advertised if isinstance(a, str)}
    if not usable:
        raise UpstreamUnavailable(
            log_detail=(
                f"discovery document at {url} advertises no accepted id token algorithm "
                f"({', '.join(sorted(pinned))})"
            )
        )
    return usable


@dataclass(frozen=True)
class _FetchFailure:
    error_type: type[BrokerError]
    log_detail: str
    at: float

    def error(self, now: float, interval: float) -> BrokerError:
        """A fresh error for this failure, saying when the next fetch may happen."""
        return self.error_type(
            "identity provider signing keys unavailable",
            log_detail=self.log_detail,
            retry_after=max(1, math.ceil(interval - (now - self.at))),
        )


@dataclass(frozen=True)
class _KeySet:
    by_kid: Mapping[str, SigningKey]
    # Serves tokens without a kid, and only when the set holds exactly one usable key.
    sole: SigningKey | None
    fetched_at: float

    def find(self, kid: str | None) -> SigningKey | None:
        return self.sole if kid is None else self.by_kid.get(kid)

    @classmethod
    def parse(
        cls, document: Mapping[str, Any], algorithms: frozenset[str], *, fetched_at: float
    ) -> _KeySet:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise UpstreamUnavailable(log_detail="JWKS has no 'keys' list")
        usable: list[SigningKey] = []
        for entry in entries:
            key = _signing_key_from_jwk(entry, algorithms)
            if key is not None:
                usable.append(key)
        if not usable:
            raise UpstreamUnavailable(
                log_detail="JWKS holds no key usable with the pinned algorithms"
            )
        by_kid: dict[str, SigningKey] = {}
        for key in usable:
            if key.kid is not None:
                by_kid.setdefault(key.kid, key)
        return cls(
            by_kid=by_kid, sole=usable[0] if len(usable) == 1 else None, fetched_at=fetched_at
        )


def _signing_key_from_jwk(entry: Any, pinned: frozenset[str]) -> SigningKey | None:
    """The verification key a JWKS entry offers, or ``None`` when it is not for us."""
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if "d" in entry:
        # A private key published by mistake is not a verification key.
        return None
    kty, crv = entry.get("kty"), entry.get("crv")
    if kty == "RSA":
        family = _RSA_ALGORITHMS
    elif kty == "EC" and isinstance(crv, str) and crv in _EC_ALGORITHM_BY_CURVE:
        family = frozenset({_EC_ALGORITHM_BY_CURVE[crv]})
    elif kty == "OKP" and crv in _OKP_CURVES:
        family = frozenset({"EdDSA"})
    else:
        return None
    usable = family & pinned
    declared = entry.get("alg")
    if declared is not None:
        usable &= {declared} if isinstance(declared, str) else set()
    if not usable:
        return None
    try:
        public_key = jwt.PyJWK(entry, algorithm=min(usable)).key
    except jwt.PyJWTError:
        return None
    return SigningKey(kid=kid, algorithms=frozenset(usable), key=public_key)


def verify_jwt(
    token: str,
    *,
    policy: JwtPolicy,
    keys: JwksCache | SharedSecret,
    nonce: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` against ``policy`` and return its claims.

    Raises ``InvalidToken`` (with a client-safe ``detail`` and a ``log_detail`` that
    never holds the token) for any refusal, and ``UpstreamUnavailable`` /
    ``UpstreamTimeout`` when the provider's keys cannot be fetched and none are cached.
    ``now`` (Unix time) defaults to the wall clock; ``nonce``, when given, must equal the
    token's ``nonce`` claim.
    """
    if not isinstance(token, str):
        raise InvalidToken("malformed token", log_detail="token is not a string")
    if len(token) > policy.max_token_bytes:
        raise InvalidToken("token too large", log_detail=f"token of {len(token)} bytes")
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidToken("malformed token", log_detail="not three base64url segments")
    header = _parse_header(token[: token.index(".")])

    alg = header.get("alg")
    if alg not in policy.algorithms:
        raise InvalidToken("algorithm not allowed", log_detail=f"alg {_excerpt(alg)}")
    if "crit" in header:
        raise InvalidToken("critical header not supported", log_detail="token has a crit header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("malformed token", log_detail="kid is not a string")
    # Keys offered in the header (jwk, jku, x5u, x5c) are never read: the key comes from `keys`.

    signing_key = keys.signing_key(kid)
    if alg not in keys.algorithms:
        # Pinned for the policy but not among those the provider advertises.
        raise InvalidToken("algorithm not allowed", log_detail=f"alg {alg} not advertised")
    if signing_key is None:
        raise InvalidToken("unknown signing key", log_detail=f"kid {_excerpt(kid)}")
    if alg not in signing_key.algorithms:
        raise InvalidToken(
            "algorithm does not match the signing key",
            log_detail=f"alg {alg} with key {_excerpt(kid)}",
        )

    try:
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=policy.algorithms,
            audience=policy.audiences,
            issuer=policy.issuers,
            options={
                "verify_signature": True,
                "require": list(policy.required_claims),
                "verify_iss": True,
                "verify_aud": True,
                "strict_aud": False,
                "verify_sub": True,
                "verify_jti": True,
                # Time claims are checked below, against `now`, with stricter typing.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.PyJWTError as e:
        raise _refusal(e, kid) from e

    _check_times(claims, policy, time.time() if now is None else now)
    if policy.check_azp:
        _check_azp(claims, policy)
    _check_nonce(claims, policy, nonce)
    if policy.allowed_token_use is not None and claims.get("token_use") != policy.allowed_token_use:
        raise InvalidToken(
            "token use not accepted", log_detail=f"token_use {_excerpt(claims.get('token_use'))}"
        )
    return claims


def _parse_header(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as e:
        raise InvalidToken("malformed token", log_detail="header is not base64url JSON") from e
    if not isinstance(header, dict):
        raise InvalidToken("malformed token", log_detail="header is not a JSON object")
    return header


def _refusal(error: jwt.PyJWTError, kid: str | None) -> InvalidToken:
    log_detail = f"{type(error).__name__}: {error} (kid {_excerpt(kid)})"
    if isinstance(error, jwt.InvalidSignatureError):
        detail = "signature verification failed"
    elif isinstance(error, jwt.MissingRequiredClaimError):
        detail = f"missing required claim '{error.claim}'"
    elif isinstance(error, jwt.InvalidIssuerError):
        detail = "issuer not accepted"
    elif isinstance(error, jwt.InvalidAudienceError):
        detail = "audience not accepted"
    elif isinstance(error, jwt.InvalidAlgorithmError):
        detail = "algorithm not allowed"
    elif isinstance(error, jwt.InvalidKeyError):
        detail = "signing key not usable"
    elif isinstance(error, jwt.DecodeError):
        detail = "malformed token"
    else:
        detail = "invalid token"
    return InvalidToken(detail, log_detail=log_detail)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int to Python, and JSON lets NaN and Infinity through.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"malformed claim '{name}'", log_detail=f"{name} is not a NumericDate")
    return float(value)


def _check_times(claims: Mapping[str, Any], policy: JwtPolicy, now: float) -> None:
    exp = _numeric_date(claims, "exp")
    if exp is None:
        if policy.require_exp:
            raise InvalidToken("missing required claim 'exp'", log_detail="token has no exp")
    elif exp <= now - policy.leeway:
        raise InvalidToken("token expired", log_detail=f"expired {now - exp:.0f}s ago")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and nbf > now + policy.leeway:
        raise InvalidToken("token not yet valid", log_detail=f"nbf {nbf - now:.0f}s ahead")
    iat = _numeric_date(claims, "iat")
    iat_future = policy.leeway if policy.max_iat_future is None else policy.max_iat_future
    if iat is not None and iat > now + iat_future:
        raise InvalidToken("token issued in the future", log_detail=f"iat {iat - now:.0f}s ahead")
    if policy.max_age is not None:
        if iat is None:
            raise InvalidToken("missing required claim 'iat'", log_detail="max_age needs iat")
        if now - iat > policy.max_age + policy.leeway:
            raise InvalidToken("token too old", log_detail=f"issued {now - iat:.0f}s ago")


def _check_azp(claims: Mapping[str, Any], policy: JwtPolicy) -> None:
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) > 1:
        # OIDC Core 3.1.3.7: with several audiences, azp names the client the token is for.
        azp = claims.get("azp")
        if not isinstance(azp, str) or azp not in policy.audiences:
            raise InvalidToken("authorized party not accepted", log_detail=f"azp {_excerpt(azp)}")


def _check_nonce(claims: Mapping[str, Any], policy: JwtPolicy, nonce: str | None) -> None:
    if nonce is None:
        if policy.require_nonce:
            raise InvalidToken("nonce required", log_detail="no nonce given with the token")
        return
    claimed = claims.get("nonce")
    if not isinstance(claimed, str) or not hmac.compare_digest(
        claimed.encode("utf-8"), nonce.encode("utf-8")
    ):
        raise InvalidToken("nonce mismatch", log_detail="nonce claim differs from the request's")


def _excerpt(value: Any) -> str:
    """A short repr of an untrusted header or claim value for the log."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _require_https_or_loopback(url: str) -> None:
    if not is_https_or_loopback(url):
        raise ValueError(f"{url!r}: key URLs must be https (plain http only on loopback)")


# 9999-12-31T23:59:59Z: the last moment a ``datetime`` can hold.
_LAST_REPRESENTABLE = 253402300799


def expiry_time(seconds: Any, *, what: str = "exp") -> datetime:
    """``seconds`` (epoch, from a token or an IdP's answer) as an aware UTC datetime; a value
    that is not a finite number before year 10000 is ``InvalidToken``, never an overflow."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= _LAST_REPRESENTABLE
    ):
        raise InvalidToken(f"{what} is out of range", log_detail=f"{what}={seconds!r:.40}")
    return datetime.fromtimestamp(seconds, UTC)
