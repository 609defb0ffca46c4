"""The userinfo endpoint after a browser login's code exchange (OIDC Core 5.3).

A conformant provider that issues an access token puts the claims asked for by scope
(``profile``, ``email``, ...) at its userinfo endpoint rather than in the id token. The
login reads them with the access token and merges them under the id token's claims: the
id token wins for every claim it carries, and userinfo never contributes the protocol
claims (``iss``, ``aud``, ``exp``, ``nonce``, ...). Userinfo's ``sub`` must be the id
token's (OIDC Core 5.3.2), or the login fails. A signed answer (``application/jwt``) goes
through ``verify_jwt`` with the id token's issuer, audience, keys and algorithms.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

from identity.errors import InvalidToken, UpstreamError
from identity.http import get_capped, json_object, upstream_session
from identity.models import Principal
from identity.providers.id_token import IdTokenProvider
from identity.tokens import verify_jwt

MAX_USERINFO_BYTES: Final = 64 * 1024
# Claims about the token rather than the user: only ever the id token's.
PROTOCOL_CLAIMS: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "nonce",
        "azp",
        "jti",
        "at_hash",
        "c_hash",
        "auth_time",
        "acr",
        "amr",
        "sid",
    }
)


class UserinfoClaims:
    """Reads one provider's userinfo endpoint for a finished login. ``verifier`` is the
    browser login's id-token verifier (its policy and keys check a signed answer)."""

    def __init__(
        self, verifier: IdTokenProvider, *, connect_timeout: float, read_timeout: float
    ) -> None:
        self._verifier = verifier
        self._policy = replace(
            verifier.policy,
            required_claims=("iss", "sub", "aud"),
            require_exp=False,
            require_nonce=False,
            max_age=None,
        )
        self._timeouts = (connect_timeout, read_timeout)
        self._session = upstream_session(pool_maxsize=4, operation="userinfo")

    def merged(self, principal: Principal, endpoint: str, access_token: str) -> Principal:
        """``principal`` with the userinfo claims merged under its own."""
        claims = self._fetch(endpoint, access_token)
        subject = claims.get("sub")
        if subject != principal.subject:
            raise UpstreamError(
                f"{self._verifier.name}: the userinfo answer names another user than the id token",
                log_detail=f"userinfo at {endpoint}: sub differs from the id token's",
            )
        merged = {k: v for k, v in claims.items() if k not in PROTOCOL_CLAIMS}
        merged.update(principal.claims)
        return replace(principal, claims=merged)

    def _fetch(self, endpoint: str, access_token: str) -> dict[str, Any]:
        name = self._verifier.name
        answer = get_capped(
            self._session,
            endpoint,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/json, application/jwt",
            },
            timeouts=self._timeouts,
            limit=MAX_USERINFO_BYTES,
            upstream=f"{name}: the userinfo endpoint",
            where=f"userinfo at {endpoint}",
        )
        body = answer.body
        if answer.status != 200 or body is None:
            raise UpstreamError(
                f"{name}: the userinfo endpoint failed",
                log_detail=f"userinfo at {endpoint}: HTTP {answer.status}"
                + (" (over the size cap)" if body is None else ""),
            )
        media_type = answer.content_type.split(";", 1)[0].strip().lower()
        if media_type == "application/jwt":
            # A refused signature is the provider failing, not the user: 502.
            try:
                return verify_jwt(
                    body.decode("ascii", "replace").strip(),
                    policy=self._policy,
                    keys=self._verifier.keys,
                    now=self._verifier.now(),
                )
            except InvalidToken as e:
                raise UpstreamError(
                    f"{name}: the signed userinfo answer does not verify",
                    log_detail=f"userinfo at {endpoint}: {e.detail} ({e.log_detail})",
                ) from None
        document = json_object(body)
        if document is None:
            raise UpstreamError(
                f"{name}: the userinfo endpoint answered nonsense",
                log_detail=f"userinfo at {endpoint}: not a JSON object",
            )
        return document
