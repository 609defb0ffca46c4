"""What the app built at start-up and every request uses."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from identity.broker import Broker
from identity.config import BrokerConfig
from identity.store import Store
from service.metrics import RequestMetrics


@dataclass
class Runtime:
    config: BrokerConfig
    store: Store
    metrics: RequestMetrics
    broker: Broker


def runtime() -> Runtime:
    """The current app's runtime."""
    rt: Runtime = current_app.extensions["chime_broker"]
    return rt
