"""``kind: oidc``: any OpenID Connect provider, by its issuer.

Mobile id tokens are verified locally against the keys of the issuer's discovery document
(fetched on the first token). The browser login is the authorization code flow with the
endpoints of the same discovery document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.config.types import NonEmptyStr, Scopes, SecureUrl
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.code_flow import (
    CodeFlowProvider,
    OidcDiscovery,
    id_token_verifier,
    static_secret,
)
from identity.providers.id_token import IdTokenProvider, login_key_for_issuer
from identity.tokens import JwksCache

ALGORITHMS = ("RS256",)


class OidcConfig(ProviderBase):
    """Any OpenID Connect provider, by its issuer (discovery)."""

    kind: Literal["oidc"]
    issuer: SecureUrl
    client_id: NonEmptyStr
    client_secret: SecretStr | None = None
    scopes: Scopes = ("openid",)
    audiences: tuple[NonEmptyStr, ...] = Field(default=(), min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _audiences_default_to_client_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "audiences" not in data and "client_id" in data:
            return {**data, "audiences": [data["client_id"]]}
        return data

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer")


def build(entry: OidcConfig, context: BuildContext) -> Built:
    """The id-token verifier (``aud`` one of ``audiences``) and the code flow."""
    timeouts = context.aws.timeouts
    token = IdTokenProvider(
        name=entry.name,
        kind=entry.kind,
        issuers=(entry.issuer,),
        audiences=entry.audiences,
        keys=JwksCache(
            issuer=entry.issuer,
            algorithms=ALGORITHMS,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        ),
        login_key=login_key_for_issuer(entry.issuer),
        leeway=entry.leeway,
        require_nonce=entry.require_nonce,
        algorithms=ALGORITHMS,
    )
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=entry.client_id,
        client_secret=static_secret(entry.client_secret),
        scopes=entry.scopes,
        server=OidcDiscovery(
            entry.issuer, connect_timeout=timeouts.connect, read_timeout=timeouts.read
        ),
        verification=id_token_verifier(token, entry.client_id),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=OidcConfig, build=build)
