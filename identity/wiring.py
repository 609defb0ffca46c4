"""The composition root: every service of the broker, built once.

``verify`` builds what is local to the config (providers with their keys parsed and
metadata files read, claim mappers, the store's location) and reports every problem at
once with its YAML path; it never contacts an IdP or AWS. ``build_services`` runs the same
``verify`` and then opens the store and assembles the broker, so ``chime-broker check``
refuses exactly the configs that start-up refuses. A DynamoDB store's table is looked up at
start-up (``check_store``, which ``chime-broker check`` also runs unless ``--offline``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from identity.aws import AwsClients
from identity.broker import Broker
from identity.chime import AppInstanceUsers, MessagingEndpoint
from identity.config.document import BrokerConfig
from identity.config.models import Problem
from identity.errors import ConfigError, StoreError
from identity.logins import BrowserLogins
from identity.mapping import ClaimMapper, build_mappers
from identity.providers.base import BuildContext, Endpoints
from identity.providers.kinds import Providers, build_providers
from identity.sealing import Sealer
from identity.store import MemoryStore, Store, open_store, store_location_problem
from identity.vending.registry import build_vendors


@dataclass(frozen=True)
class Verified:
    """What ``verify`` built: the providers and the claim mappers."""

    providers: Providers
    mappers: Mapping[str, ClaimMapper]


@dataclass(frozen=True)
class Services:
    """The broker's services, shared by every request."""

    config: BrokerConfig
    store: Store
    clients: AwsClients
    broker: Broker
    logins: BrowserLogins
    providers: Providers


def verify(
    config: BrokerConfig,
    endpoints: Endpoints,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> Verified:
    """Build the providers and mappers of ``config`` against ``store`` (or, for a check,
    a throw-away memory store after checking the configured store's location).

    Raises ``ConfigError`` with every problem, each with its YAML path and line.
    """
    problems: list[Problem] = []
    if store is None:
        location = store_location_problem(config.store)
        if location is not None:
            problems.append((("store",), location))
    context = BuildContext(
        aws=config.aws,
        service=config.service,
        demo=config.is_demo,
        store=store if store is not None else MemoryStore(),
        endpoints=endpoints,
        clock=clock,
    )
    providers, provider_problems = build_providers(config.providers, context)
    problems += provider_problems
    mappers: Mapping[str, ClaimMapper] = {}
    mapper_problems: list[str] = []
    try:
        if not provider_problems:
            mappers = build_mappers(config.providers, user_tag=config.chime.user_tag)
    except ConfigError as exc:
        mapper_problems = exc.problems
    reported = config.report_problems(problems) + mapper_problems
    if reported:
        raise ConfigError(reported)
    return Verified(providers, mappers)


def _store_is_looked_up(config: BrokerConfig) -> bool:
    # Only DynamoDB: its table is made by `store init`, not by the broker, so a missing
    # one must stop start-up rather than fail the first request.
    return config.store_scheme.lower() == "dynamodb"


def open_configured_store(config: BrokerConfig) -> Store:
    """The config's store, opened in ``aws.region``; a DynamoDB store's table is looked up.

    Raises ``ConfigError`` when the table cannot be reached (missing, no access).
    """
    store = open_store(config.store, region=config.aws.region)
    if _store_is_looked_up(config):
        try:
            store.ping()
        except StoreError as e:
            store.close()
            raise ConfigError(config.report_problems([(("store",), str(e))])) from None
    return store


def check_store(config: BrokerConfig) -> None:
    """Raise ``ConfigError`` if start-up would fail to reach the config's store where it
    looks (a DynamoDB table); other stores are not touched."""
    if _store_is_looked_up(config):
        open_configured_store(config).close()


def build_services(
    config: BrokerConfig,
    endpoints: Endpoints,
    *,
    store: Store | None = None,
    clients: AwsClients | None = None,
    clock: Callable[[], float] = time.time,
    max_pool_connections: int = 64,
) -> Services:
    """Verify ``config``, open the store, and assemble the broker and its logins.

    Raises ``ConfigError`` (from ``verify``) for a config that cannot serve, or a
    DynamoDB store whose table cannot be reached.
    """
    if store is None:
        if store_location_problem(config.store) is not None:
            verify(config, endpoints, clock=clock)  # raises, with every other problem too
        store = open_configured_store(config)
    verified = verify(config, endpoints, store=store, clock=clock)
    clients = (
        clients
        if clients is not None
        else AwsClients(config, max_pool_connections=max_pool_connections)
    )
    # demo mode may run without a secret: a per-process one is enough for memory://
    sealer = Sealer(config.service.secret_keys or [secrets.token_hex(32)])
    broker = Broker(
        config,
        store=store,
        sealer=sealer,
        providers=verified.providers,
        mappers=verified.mappers,
        vendors=build_vendors(config, clients, store),
        app_instance_users=(
            AppInstanceUsers(config.chime, clients, store, clock=clock)
            if config.chime.provision_users
            else None
        ),
        messaging_endpoint=(
            MessagingEndpoint(clients) if config.chime.messaging_endpoint else None
        ),
        clock=clock,
    )
    logins = BrowserLogins(
        broker,
        service=config.service,
        store=store,
        sealer=sealer,
        endpoints=endpoints,
        providers=verified.providers.redirect,
        saml_providers=verified.providers.saml,
        clock=clock,
    )
    for saml in verified.providers.saml.values():
        saml.warm_up()
    return Services(config, store, clients, broker, logins, verified.providers)
