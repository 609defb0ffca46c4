"""What the app built at start-up and every request uses."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from identity.broker import Broker
from identity.config.document import BrokerConfig
from identity.logins import BrowserLogins
from identity.providers.kinds import Providers
from identity.store import Store
from service.endpoints import Endpoints
from service.metrics import RequestMetrics


@dataclass
class Runtime:
    config: BrokerConfig
    store: Store
    metrics: RequestMetrics
    broker: Broker
    logins: BrowserLogins
    providers: Providers
    endpoints: Endpoints


def runtime() -> Runtime:
    """The current app's runtime."""
    rt: Runtime = current_app.extensions["chime_broker"]
    return rt
