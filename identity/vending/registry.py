"""Vending modes by the YAML ``exchange`` name, built once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from identity.aws import AwsClients
from identity.config.document import BrokerConfig
from identity.errors import ConfigError
from identity.store import Store
from identity.vending.base import Vendor
from identity.vending.cognito import CognitoDeveloperVendor, CognitoEnhancedVendor
from identity.vending.sts import StsVendor

_Factory = Callable[[BrokerConfig, AwsClients, Store], Vendor]

VENDORS: Final[dict[str, _Factory]] = {
    "cognito": CognitoEnhancedVendor,
    "cognito_developer": CognitoDeveloperVendor,
    "sts": lambda config, clients, _store: StsVendor(config, clients),
}


def build_vendors(config: BrokerConfig, clients: AwsClients, store: Store) -> dict[str, Vendor]:
    """One vendor per exchange mode that some provider uses, keyed by the mode's name.

    Raises ConfigError naming every provider whose ``exchange`` is unknown.
    """
    unknown = [
        f"providers[{index}].exchange: unknown exchange mode {provider.exchange!r} "
        f"(expected one of {', '.join(sorted(VENDORS))})"
        for index, provider in enumerate(config.providers)
        if provider.exchange not in VENDORS
    ]
    if unknown:
        raise ConfigError(unknown)
    modes = dict.fromkeys(provider.exchange for provider in config.providers)
    return {mode: VENDORS[mode](config, clients, store) for mode in modes}
