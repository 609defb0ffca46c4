"""``kind: oidc``: any OpenID Connect provider, by its issuer.

Mobile id tokens are verified locally against the keys of the issuer's discovery document
(fetched on the first token), signed with one of the public-key algorithms the document
advertises (``id_token_signing_alg_values_supported``) or, when set, of ``algorithms``.
The browser login is the authorization code flow with the endpoints of the same discovery
document; it also reads the userinfo endpoint, so templates see claims a conformant
provider puts there (OIDC Core 5.4) rather than in the id token. ``offline_access`` in
``scopes`` asks for consent (``prompt=consent``, OIDC Core 11) so that a refresh token is
issued.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.config.types import NonEmptyStr, Scopes, SecureUrl
from identity.discovery import OidcDiscovery
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.code_flow import (
    CodeFlowProvider,
    DiscoveredServer,
    id_token_verifier,
    static_secret,
)
from identity.providers.id_token import IdTokenProvider, login_key_for_issuer
from identity.providers.userinfo import UserinfoClaims
from identity.tokens import JwksCache

JwsAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
ALGORITHMS: tuple[JwsAlgorithm, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
)  # fmt: skip
"""Every algorithm an ``oidc`` provider may sign with: public-key only, never ``none`` or
HMAC (EdDSA with Ed25519 keys)."""

USERINFO_CLAIMS: Final = frozenset(
    {
        # OIDC Core 5.4: claims requested by scope, returned from the userinfo endpoint
        # whenever an access token is issued.
        "name", "family_name", "given_name", "middle_name", "nickname",
        "preferred_username", "profile", "picture", "website", "gender", "birthdate",
        "zoneinfo", "locale", "updated_at", "email", "email_verified", "address",
        "phone_number", "phone_number_verified",
    }
)  # fmt: skip


class OidcConfig(ProviderBase):
    """Any OpenID Connect provider, by its issuer (discovery)."""

    kind: Literal["oidc"]
    issuer: SecureUrl
    client_id: NonEmptyStr
    client_secret: SecretStr | None = None
    scopes: Scopes = ("openid",)
    audiences: tuple[NonEmptyStr, ...] = Field(default=(), min_length=1)
    algorithms: tuple[JwsAlgorithm, ...] | None = Field(default=None, min_length=1)

    @field_validator("algorithms", mode="before")
    @classmethod
    def _public_key_algorithms(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str) and item not in ALGORITHMS:
                    raise ValueError(
                        f"{item!r} is not accepted: id tokens must be signed with one of "
                        + ", ".join(ALGORITHMS)
                        + " (never 'none' or HMAC)"
                    )
            if len(set(map(str, value))) != len(value):
                raise ValueError("each algorithm once")
        return value

    @model_validator(mode="before")
    @classmethod
    def _audiences_default_to_client_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "audiences" not in data and "client_id" in data:
            return {**data, "audiences": [data["client_id"]]}
        return data

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer")

    def warnings(self) -> list[tuple[Path, str]]:
        """Claims ``map`` reads that a mobile app's id token may not carry: with
        ``audiences`` beyond ``client_id`` there is a mobile path (``POST /v1/token``, id
        token only, no access token to read userinfo with), and a conformant provider puts
        the standard profile and email claims at userinfo, not in the id token."""
        if set(self.audiences) <= {self.client_id}:
            return []
        return [
            (
                where,
                f"reads {claim!r}, which a conformant provider returns at userinfo rather "
                "than in the id token (OIDC Core 5.4); browser logins read userinfo, but "
                "id tokens of the mobile audiences may lack it: map mobile users with "
                "id-token claims, or have the provider put it in the id token",
            )
            for where, claim in self.template_claims()
            if claim in USERINFO_CLAIMS
        ]


def build(entry: OidcConfig, context: BuildContext) -> Built:
    """The id-token verifier (``aud`` one of ``audiences``) and the code flow."""
    timeouts = context.aws.timeouts
    algorithms = entry.algorithms or ALGORITHMS
    # One document for the keys and the code flow: fetched once, whichever needs it first.
    discovery = OidcDiscovery(
        entry.issuer, connect_timeout=timeouts.connect, read_timeout=timeouts.read
    )
    token = IdTokenProvider(
        name=entry.name,
        kind=entry.kind,
        issuers=(entry.issuer,),
        audiences=entry.audiences,
        keys=JwksCache(
            discovery=discovery,
            algorithms=algorithms,
            follow_discovery=entry.algorithms is None,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        ),
        login_key=login_key_for_issuer(entry.issuer),
        leeway=entry.leeway,
        require_nonce=entry.require_nonce,
        algorithms=algorithms,
    )
    offline = "offline_access" in entry.scopes
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=entry.client_id,
        client_secret=static_secret(entry.client_secret),
        scopes=entry.scopes,
        server=DiscoveredServer(discovery),
        verification=id_token_verifier(token, entry.client_id),
        post_logout_redirect_uri=context.service.default_return_to,
        extra_authorize_params={"prompt": "consent"} if offline else None,
        offline=offline,
        userinfo=UserinfoClaims(
            token.for_browser(entry.client_id),
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        ),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=OidcConfig, build=build)
