"""``kind: apple``: Sign in with Apple.

Mobile id tokens for any of ``client_ids`` (bundle or services ids) are verified locally
against Apple's keys, with ``email_verified`` / ``is_private_email`` normalised to
booleans. The browser login (when ``team_id``, ``key_id`` and ``private_key`` are set)
posts its answer back (``response_mode=form_post``), and its client secret is an ES256
JWT signed with the team's key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import Field, SecretStr

from identity.config.models import Problem, ProviderBase, ValidationContext
from identity.config.report import Path
from identity.config.types import NonEmptyStr, SecureUrl
from identity.errors import InvalidToken
from identity.providers.base import BuildContext, Built, ProviderKind, ProviderProblem
from identity.providers.code_flow import (
    AuthorizationServer,
    CodeFlowProvider,
    fixed,
    id_token_verifier,
)
from identity.providers.id_token import IdTokenProvider
from identity.tokens import JwksCache

LOGIN_KEY: Final = "appleid.apple.com"
"""The identity pool's ``Logins`` key for Apple."""
# Apple accepts client secrets for up to six months; a day keeps a leaked one short-lived.
APPLE_CLIENT_SECRET_LIFETIME: Final = 24 * 3600
APPLE_AUDIENCE: Final = "https://appleid.apple.com"
# Apple sends these as the strings "true" / "false" (OIDC says booleans).
APPLE_BOOLEAN_CLAIMS: Final = ("email_verified", "is_private_email")
_SIGNING_KEYS: Final = ("team_id", "key_id", "private_key")


class AppleConfig(ProviderBase):
    """Sign in with Apple; ``team_id``/``key_id``/``private_key`` sign the redirect login's
    client secret."""

    kind: Literal["apple"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    team_id: NonEmptyStr | None = None
    key_id: NonEmptyStr | None = None
    private_key: SecretStr | None = None
    issuer: SecureUrl = "https://appleid.apple.com"
    jwks_url: SecureUrl = "https://appleid.apple.com/auth/keys"
    authorize_url: SecureUrl = "https://appleid.apple.com/auth/authorize"
    token_url: SecureUrl = "https://appleid.apple.com/auth/token"  # noqa: S105

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer", "jwks_url", "authorize_url", "token_url")

    def kind_problems(self, context: ValidationContext) -> list[Problem]:
        given = [k for k in _SIGNING_KEYS if getattr(self, k) is not None]
        if given and len(given) < len(_SIGNING_KEYS):
            missing = [k for k in _SIGNING_KEYS if k not in given]
            return [
                (
                    (missing[0],),
                    "team_id, key_id and private_key go together (they sign the client secret)",
                )
            ]
        return []


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


class AppleClientSecret:
    """Sign in with Apple's client secret: an ES256 JWT signed with the team's key
    (``iss`` team id, ``sub`` the services id, ``aud`` Apple), reused until half its life
    has passed."""

    def __init__(
        self,
        *,
        team_id: str,
        key_id: str,
        private_key_pem: str,
        client_id: str,
        audience: str = APPLE_AUDIENCE,
        lifetime: int = APPLE_CLIENT_SECRET_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("Apple's key is an EC P-256 key (a .p8 file)")
        self._key = key
        self._team_id = team_id
        self._key_id = key_id
        self._client_id = client_id
        self._audience = audience
        self._lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None

    def __repr__(self) -> str:
        return f"AppleClientSecret(team_id={self._team_id!r}, key_id={self._key_id!r})"

    def __call__(self) -> str:
        now = self._clock()
        with self._lock:
            if self._current is not None and self._current[1] - now > self._lifetime / 2:
                return self._current[0]
            issued = int(now)
            secret = jwt.encode(
                {
                    "iss": self._team_id,
                    "iat": issued,
                    "exp": issued + self._lifetime,
                    "aud": self._audience,
                    "sub": self._client_id,
                },
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._current = (secret, issued + self._lifetime)
            return secret


def build(entry: AppleConfig, context: BuildContext) -> Built:
    """Id tokens with ``aud`` one of ``client_ids``; the code flow when the signing key is
    set (the key is parsed here: an unusable one is a problem of ``private_key``)."""
    timeouts = context.aws.timeouts
    token = IdTokenProvider(
        name=entry.name,
        kind=entry.kind,
        issuers=(entry.issuer,),
        audiences=entry.client_ids,
        keys=JwksCache(
            jwks_url=entry.jwks_url,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        ),
        login_key=LOGIN_KEY,
        leeway=entry.leeway,
        require_nonce=entry.require_nonce,
        claims_hook=normalise_apple_claims,
    )
    if entry.team_id is None or entry.key_id is None or entry.private_key is None:
        return Built(token=token)
    client_id = entry.client_ids[0]
    try:
        secret = AppleClientSecret(
            team_id=entry.team_id,
            key_id=entry.key_id,
            private_key_pem=entry.private_key.get_secret_value(),
            client_id=client_id,
            audience=entry.issuer,
        )
    except ValueError as e:
        message = str(e) if "P-256" in str(e) else "not a PEM key"
        raise ProviderProblem(("private_key",), message) from None
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=client_id,
        client_secret=secret,
        scopes=("name", "email"),
        server=fixed(AuthorizationServer(entry.authorize_url, entry.token_url, (entry.issuer,))),
        verification=id_token_verifier(token, client_id),
        # Apple posts the answer when names or e-mail are asked for.
        extra_authorize_params={"response_mode": "form_post"},
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=AppleConfig, build=build)
