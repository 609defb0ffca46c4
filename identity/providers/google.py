"""``kind: google``: Sign in with Google.

Mobile id tokens for any of ``client_ids`` are verified locally against Google's keys;
``iss`` is accepted with or without its scheme. The browser login (when ``client_secret``
is set) is the code flow at Google's endpoints, for the first of ``client_ids``; with
``offline_access`` in ``scopes`` it asks for a refresh token the way Google wants it,
``access_type=offline`` with ``prompt=consent`` (Google refuses the ``offline_access``
scope itself).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, SecretStr

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.config.types import NonEmptyStr, Scopes, SecureUrl
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.code_flow import (
    AuthorizationServer,
    CodeFlowProvider,
    fixed,
    id_token_verifier,
    static_secret,
)
from identity.providers.id_token import IdTokenProvider, login_key_for_issuer
from identity.tokens import JwksCache

LOGIN_KEY: Final = "accounts.google.com"
"""The identity pool's ``Logins`` key for Google."""


class GoogleConfig(ProviderBase):
    """Sign in with Google: id tokens for any of ``client_ids``."""

    kind: Literal["google"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    scopes: Scopes = ("openid", "email", "profile")
    issuer: SecureUrl = "https://accounts.google.com"
    jwks_url: SecureUrl = "https://www.googleapis.com/oauth2/v3/certs"
    authorize_url: SecureUrl = "https://accounts.google.com/o/oauth2/v2/auth"
    token_url: SecureUrl = "https://oauth2.googleapis.com/token"  # noqa: S105

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer", "jwks_url", "authorize_url", "token_url")


def google_issuers(issuer: str) -> tuple[str, ...]:
    """Google signs ``iss`` both with and without ``https://``: accept both spellings
    (``http://`` is stripped likewise for a loopback issuer in tests)."""
    bare = login_key_for_issuer(issuer)
    return (issuer,) if bare == issuer else (issuer, bare)


def build(entry: GoogleConfig, context: BuildContext) -> Built:
    """Id tokens with ``aud`` one of ``client_ids`` (``azp`` too when ``aud`` lists
    several); the code flow when ``client_secret`` is set."""
    timeouts = context.aws.timeouts
    token = IdTokenProvider(
        name=entry.name,
        kind=entry.kind,
        issuers=google_issuers(entry.issuer),
        audiences=entry.client_ids,
        keys=JwksCache(
            jwks_url=entry.jwks_url,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        ),
        login_key=LOGIN_KEY,
        leeway=entry.leeway,
        require_nonce=entry.require_nonce,
    )
    if entry.client_secret is None:
        return Built(token=token)
    client_id = entry.client_ids[0]
    offline = "offline_access" in entry.scopes
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=client_id,
        client_secret=static_secret(entry.client_secret),
        scopes=tuple(s for s in entry.scopes if s != "offline_access"),
        server=fixed(
            AuthorizationServer(entry.authorize_url, entry.token_url, google_issuers(entry.issuer))
        ),
        verification=id_token_verifier(token, client_id),
        extra_authorize_params={"access_type": "offline", "prompt": "consent"} if offline else None,
        offline=offline,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=GoogleConfig, build=build)
