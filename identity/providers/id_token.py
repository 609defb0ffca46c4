"""Id tokens verified locally against the issuer's keys.

``IdTokenProvider`` is the one id-token verifier every JWT-issuing kind uses (``oidc``,
``google``, ``apple`` and ``cognito_user_pool`` configure it differently): its keys come
from a ``JwksCache`` built once, and every token goes through
``identity.tokens.verify_jwt`` with a policy fixed at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from identity.errors import InvalidToken
from identity.models import Principal
from identity.store import Store
from identity.tokens import JwksCache, JwtPolicy, expiry_time, verify_jwt

ClaimsHook = Callable[[dict[str, Any]], dict[str, Any]]

NONCE_PREFIX: Final = "id-token-nonce:"
MAX_NONCE_MEMORY: Final = 24 * 3600
"""The longest an id token may still live for its nonce to be single-use: the replay cache
remembers a nonce no longer than this (Cognito user pools issue id tokens of up to a day)."""


def login_key_for_issuer(issuer: str) -> str:
    """The Cognito ``Logins`` key of a generic OIDC provider: its issuer without the
    scheme (``https://``, or ``http://`` for loopback issuers in tests) or trailing ``/``.
    """
    for scheme in ("https://", "http://"):
        if issuer.startswith(scheme):
            issuer = issuer[len(scheme) :]
            break
    return issuer.rstrip("/")


class IdTokenProvider:
    """A ``TokenProvider`` that takes id tokens only.

    ``issuers`` lists every accepted ``iss`` spelling; the principal records the one the
    token carries. ``claims_hook`` may normalise or refuse (raising
    ``InvalidToken``) the verified claims before they become the principal's.
    """

    accepts_id_token = True
    accepts_access_token = False

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        issuers: tuple[str, ...],
        audiences: tuple[str, ...],
        keys: JwksCache,
        login_key: str,
        leeway: int = 60,
        require_nonce: bool = False,
        algorithms: tuple[str, ...] = ("RS256",),
        allowed_token_use: str | None = None,
        claims_hook: ClaimsHook | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._name = name
        self._kind = kind
        self.login_key = login_key
        self.keys = keys
        self.policy = JwtPolicy(
            issuers=issuers,
            audiences=audiences,
            algorithms=algorithms,
            leeway=leeway,
            require_nonce=require_nonce,
            allowed_token_use=allowed_token_use,
        )
        self._claims_hook = claims_hook
        self._clock = clock

    def __repr__(self) -> str:
        return f"IdTokenProvider(name={self._name!r}, kind={self._kind!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    def now(self) -> float | None:
        """The injected clock's time (``None``: the wall clock)."""
        return self._clock() if self._clock is not None else None

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> Principal:
        """Verify ``id_token`` with this provider's policy and return its principal."""
        now = self.now()
        claims = verify_jwt(id_token, policy=self.policy, keys=self.keys, nonce=nonce, now=now)
        if self._claims_hook is not None:
            claims = self._claims_hook(claims)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("malformed claim 'sub'", log_detail="sub is not a non-empty string")
        return Principal(
            provider=self._name,
            issuer=claims["iss"],
            subject=subject,
            claims=claims,
            login_key=self.login_key,
            login_token=id_token,
            token_expires_at=expiry_time(claims["exp"]),
        )

    def for_browser(self, client_id: str) -> IdTokenProvider:
        """The same verifier (keys, issuers, algorithms, claim checks) for the browser
        login of ``client_id``: ``aud`` must be that client, and the nonce is the login
        transaction's, always passed in, so ``require_nonce`` does not apply."""
        narrowed = IdTokenProvider(
            name=self._name,
            kind=self._kind,
            issuers=self.policy.issuers,
            audiences=(client_id,),
            keys=self.keys,
            login_key=self.login_key,
            claims_hook=self._claims_hook,
            clock=self._clock,
        )
        narrowed.policy = replace(self.policy, audiences=(client_id,), require_nonce=False)
        return narrowed

    def verify_access_token(self, access_token: str) -> Principal:
        """Refused: this provider's mobile clients present id tokens."""
        raise InvalidToken(f"provider {self._name!r} takes an id_token, not an access_token")


class SingleUseNonces:
    """The replay cache of mobile id-token nonces (``require_nonce``): a nonce is accepted
    once per provider while its token could still verify, so a token copied from a device
    cannot be exchanged a second time."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    def spend(self, principal: Principal, *, leeway: int) -> str:
        """Mark the nonce of ``principal``'s (verified) id token used and return its key;
        ``InvalidToken`` when it was used before, or when the token lives too long for the
        cache to remember it."""
        nonce = principal.claims.get("nonce")
        if not isinstance(nonce, str) or principal.token_expires_at is None:
            raise InvalidToken("nonce required", log_detail="no nonce claim to spend")
        remaining = principal.token_expires_at.timestamp() - self._clock()
        if remaining > MAX_NONCE_MEMORY:
            raise InvalidToken(
                "id token lives too long to be used once",
                log_detail=f"exp {remaining:.0f}s ahead, over {MAX_NONCE_MEMORY}s",
            )
        digest = hashlib.sha256(f"{principal.provider}\0{nonce}".encode()).hexdigest()
        key = NONCE_PREFIX + digest
        # Kept until no clock within the leeway could still accept the token.
        if not self._store.set_if_absent(key, b"1", max(1.0, remaining + leeway)):
            raise InvalidToken("id token already used", log_detail=f"replayed nonce {digest[:16]}")
        return key

    def release(self, key: str) -> None:
        """Make a spent nonce usable again: the exchange it started issued nothing."""
        self._store.delete(key)
