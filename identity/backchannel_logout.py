"""OpenID Connect Back-Channel Logout 1.0: an ``oidc`` provider tells the broker that a
user's session there has ended, and the broker sessions that stood on it end too.

The provider posts a logout token (a JWT) to ``/v1/backchannel-logout/{provider}``. It goes
through the one ``verify_jwt`` with the provider's id-token keys and pinned algorithms,
``iss`` one of the provider's issuers and ``aud`` its ``client_id`` (the browser login's
client, whom the provider knows the logout URI of), then through the checks of section
2.6: ``iat`` present and at most ``MAX_LOGOUT_TOKEN_AGE`` old, ``exp`` when present,
``events`` holding the back-channel logout event as a JSON object, ``sub`` or ``sid``, no
``nonce`` (which sets an id token apart), and ``jti`` accepted once per issuer.

With ``sid`` the token ends the broker sessions whose login's id token carried that
``sid`` (providers put it there when the client registered
``backchannel_logout_session_required``); with ``sub`` only, every session of that subject
(``identity.upstream_sessions``). Only ``kind: oidc`` providers
take logout tokens: Google, Apple and Cognito user pools send none.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from identity.broker import Broker
from identity.errors import InvalidLogoutToken, InvalidRequest, InvalidToken
from identity.providers.id_token import IdTokenProvider
from identity.providers.oidc import OidcConfig
from identity.store import Store
from identity.tokens import JwksCache, JwtPolicy, verify_jwt
from identity.upstream_sessions import (
    MAX_UPSTREAM_ID_LENGTH,
    end_upstream_session,
    end_upstream_subject,
)

BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
# Bounds how long a jti must be remembered when the token has no exp.
MAX_LOGOUT_TOKEN_AGE: Final = 600
MAX_JTI_LENGTH: Final = 256
_REPLAY_PREFIX: Final = "logout-token:"
_REQUIRED_CLAIMS: Final = ("iss", "aud", "iat", "jti", "events")


@dataclass(frozen=True)
class LogoutNotice:
    """What a verified logout token says ended at the provider: a subject, a session of
    the provider (``sid``), or both."""

    provider: str
    subject: str | None
    session_id: str | None


class LogoutTokenVerifier:
    """Verifies one ``oidc`` provider's logout tokens; each ``jti`` is accepted once."""

    def __init__(self, id_tokens: IdTokenProvider, *, client_id: str, store: Store) -> None:
        base = id_tokens.policy
        self._id_tokens = id_tokens
        self._keys: JwksCache = id_tokens.keys
        self._store = store
        self._policy = JwtPolicy(
            issuers=base.issuers,
            audiences=(client_id,),
            algorithms=base.algorithms,
            leeway=base.leeway,
            max_age=MAX_LOGOUT_TOKEN_AGE,
            required_claims=_REQUIRED_CLAIMS,
            require_nonce=False,
            require_exp=False,
            check_azp=True,
        )

    def verify(self, logout_token: str) -> LogoutNotice:
        """The notice ``logout_token`` carries; ``InvalidLogoutToken`` when it does not
        verify or was used before, ``Upstream*`` when the provider's keys are out of reach."""
        now = self._id_tokens.now()
        now = time.time() if now is None else now
        try:
            claims = verify_jwt(logout_token, policy=self._policy, keys=self._keys, now=now)
        except InvalidToken as e:
            raise InvalidLogoutToken(e.detail, log_detail=e.log_detail) from e
        _check_event(claims)
        if "nonce" in claims:
            raise InvalidLogoutToken(
                "a logout token carries no nonce", log_detail="logout token with a nonce"
            )
        subject = _optional_id(claims, "sub")
        session_id = _optional_id(claims, "sid")
        if subject is None and session_id is None:
            raise InvalidLogoutToken(
                "a logout token names a sub or a sid", log_detail="neither sub nor sid"
            )
        self._use_once(claims, now)
        return LogoutNotice(provider=self._id_tokens.name, subject=subject, session_id=session_id)

    def _use_once(self, claims: Mapping[str, Any], now: float) -> None:
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise InvalidLogoutToken(
                "malformed claim 'jti'", log_detail="jti is empty, too long or not a string"
            )
        digest = hashlib.sha256(f"{claims['iss']}\x00{jti}".encode()).hexdigest()
        # Kept until verify_jwt's max_age (with the leeway) refuses the token anyway.
        ttl = max(1.0, float(claims["iat"]) + MAX_LOGOUT_TOKEN_AGE + self._policy.leeway - now)
        if not self._store.set_if_absent(_REPLAY_PREFIX + digest, b"1", ttl):
            raise InvalidLogoutToken("logout token already used", log_detail="replayed jti")


def _check_event(claims: Mapping[str, Any]) -> None:
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise InvalidLogoutToken(
            "not a back-channel logout token",
            log_detail="events lacks the back-channel logout event as a JSON object",
        )


def _optional_id(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_UPSTREAM_ID_LENGTH:
        raise InvalidLogoutToken(
            f"malformed claim '{name}'", log_detail=f"{name} is not a usable string"
        )
    return value


class BackChannelLogout:
    """The logout tokens of every ``oidc`` provider of ``broker``, built once."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._verifiers: dict[str, LogoutTokenVerifier] = {}
        for entry in broker.config.providers:
            id_tokens = broker.token_providers.get(entry.name)
            if isinstance(entry, OidcConfig) and isinstance(id_tokens, IdTokenProvider):
                self._verifiers[entry.name] = LogoutTokenVerifier(
                    id_tokens, client_id=entry.client_id, store=broker.store
                )

    def log_out(self, provider: str, logout_token: str) -> None:
        """Verify ``logout_token`` from ``provider`` and end the broker sessions it names:
        those of its ``sid`` when it has one, else every session of its ``sub`` (the user
        may have none here: that is a success too)."""
        self._broker.provider_config(provider)
        verifier = self._verifiers.get(provider)
        if verifier is None:
            raise InvalidRequest(f"provider {provider!r} takes no back-channel logout")
        notice = verifier.verify(logout_token)
        if notice.session_id is not None:
            end_upstream_session(self._broker, provider, notice.session_id)
        elif notice.subject is not None:
            end_upstream_subject(self._broker, provider, notice.subject)
