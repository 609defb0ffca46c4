"""Provider kind -> the constructor of its ``TokenProvider``, keyed by the YAML ``kind``.

``saml`` and ``guest`` providers take no upstream token and are built by their own
modules; every other kind is built here, once, at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from identity.config import (
    AmazonProvider,
    AppleProvider,
    BrokerConfig,
    CognitoUserPoolProvider,
    FacebookProvider,
    GoogleProvider,
    OidcProvider,
    ProviderBase,
)
from identity.errors import ConfigError
from identity.providers.base import TokenProvider
from identity.providers.oidc import build_oidc
from identity.providers.social import (
    build_amazon,
    build_apple,
    build_cognito_user_pool,
    build_facebook,
    build_google,
)

TokenProviderBuilder = Callable[[ProviderBase, BrokerConfig], TokenProvider]
_P = TypeVar("_P", bound=ProviderBase)

# Kinds whose logins are not a token exchange (SAML assertions, guest invites).
NON_TOKEN_KINDS: Final = frozenset({"saml", "guest"})


def _for(
    model: type[_P], build: Callable[[_P, BrokerConfig], TokenProvider]
) -> TokenProviderBuilder:
    """``build`` made to take any provider entry, checked to be a ``model``."""

    def builder(provider: ProviderBase, config: BrokerConfig) -> TokenProvider:
        if not isinstance(provider, model):
            raise TypeError(f"kind {provider.kind!r} needs a {model.__name__} entry")
        return build(provider, config)

    return builder


TOKEN_PROVIDER_BUILDERS: Final[Mapping[str, TokenProviderBuilder]] = {
    "oidc": _for(OidcProvider, build_oidc),
    "google": _for(GoogleProvider, build_google),
    "apple": _for(AppleProvider, build_apple),
    "facebook": _for(FacebookProvider, build_facebook),
    "amazon": _for(AmazonProvider, build_amazon),
    "cognito_user_pool": _for(CognitoUserPoolProvider, build_cognito_user_pool),
}


def build_token_providers(config: BrokerConfig) -> dict[str, TokenProvider]:
    """Every token-taking provider of ``config``, keyed by provider name.

    Raises ``ConfigError`` listing every entry whose ``kind`` has no constructor
    ("unknown provider kind") or whose constructor refuses it.
    """
    built: dict[str, TokenProvider] = {}
    problems: list[str] = []
    for index, provider in enumerate(config.providers):
        if provider.kind in NON_TOKEN_KINDS:
            continue
        builder = TOKEN_PROVIDER_BUILDERS.get(provider.kind)
        if builder is None:
            problems.append(f"providers[{index}].kind: unknown provider kind {provider.kind!r}")
            continue
        try:
            built[provider.name] = builder(provider, config)
        except (TypeError, ValueError) as e:
            problems.append(f"providers[{index}]: {e}")
    if problems:
        raise ConfigError(problems)
    return built
