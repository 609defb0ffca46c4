"""``kind: cognito_user_pool``: a Cognito user pool's id tokens.

Issuer and JWKS derive from ``user_pool_id``; ``token_use`` must be ``id`` (access tokens
are refused). The browser login's endpoints, when not configured, come from the issuer's
discovery document. The identity pool's ``Logins`` key always names the pool, whatever
issuer is configured.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, SecretStr, model_validator

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.config.types import USER_POOL_ID, NonEmptyStr, SecureUrl, UserPoolId
from identity.discovery import OidcDiscovery
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.code_flow import (
    AuthorizationServer,
    CodeFlowProvider,
    DiscoveredServer,
    ServerSource,
    fixed,
    id_token_verifier,
    static_secret,
)
from identity.providers.id_token import IdTokenProvider
from identity.tokens import JwksCache

ID_TOKEN_USE: Final = "id"  # noqa: S105 -- the token_use claim value Cognito id tokens carry


class CognitoUserPoolConfig(ProviderBase):
    """A Cognito user pool's id tokens.  Issuer and JWKS derive from ``user_pool_id``; the
    redirect endpoints, when unset, come from the issuer's discovery document."""

    kind: Literal["cognito_user_pool"]
    user_pool_id: UserPoolId
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    issuer: SecureUrl
    jwks_url: SecureUrl
    authorize_url: SecureUrl | None = None
    token_url: SecureUrl | None = None

    @model_validator(mode="before")
    @classmethod
    def _urls_from_pool(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("user_pool_id"), str):
            return data
        pool = data["user_pool_id"]
        match = USER_POOL_ID.fullmatch(pool)
        # An invalid pool id is reported on its own key; the URLs then stay a valid filler.
        region, pool = (match[1], pool) if match else ("us-east-1", "invalid")
        issuer = data.get("issuer", f"https://cognito-idp.{region}.amazonaws.com/{pool}")
        filled = {"issuer": issuer}
        if "jwks_url" not in data and isinstance(issuer, str):
            filled["jwks_url"] = issuer.rstrip("/") + "/.well-known/jwks.json"
        return {**data, **filled}

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer", "jwks_url", "authorize_url", "token_url")


def cognito_user_pool_region(user_pool_id: str, default: str) -> str:
    """A user pool id starts with its region (``us-east-1_AbC123``)."""
    region, sep, _ = user_pool_id.partition("_")
    return region if sep and region else default


def cognito_user_pool_login_key(region: str, user_pool_id: str) -> str:
    """The ``Logins`` key of a user pool: ``cognito-idp.{region}.amazonaws.com/{pool}``."""
    return f"cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def build(entry: CognitoUserPoolConfig, context: BuildContext) -> Built:
    """Id tokens with ``aud`` one of ``client_ids``, and the code flow for the first."""
    timeouts = context.aws.timeouts
    region = cognito_user_pool_region(entry.user_pool_id, context.aws.region)
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
        login_key=cognito_user_pool_login_key(region, entry.user_pool_id),
        leeway=entry.leeway,
        require_nonce=entry.require_nonce,
        allowed_token_use=ID_TOKEN_USE,
    )
    client_id = entry.client_ids[0]
    server: ServerSource
    if entry.authorize_url is not None and entry.token_url is not None:
        server = fixed(AuthorizationServer(entry.authorize_url, entry.token_url, (entry.issuer,)))
    else:
        server = DiscoveredServer(
            OidcDiscovery(
                entry.issuer, connect_timeout=timeouts.connect, read_timeout=timeouts.read
            ),
            authorization_endpoint=entry.authorize_url,
            token_endpoint=entry.token_url,
        )
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=client_id,
        client_secret=static_secret(entry.client_secret),
        scopes=("openid", "email", "profile"),
        server=server,
        verification=id_token_verifier(token, client_id),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=CognitoUserPoolConfig, build=build)
