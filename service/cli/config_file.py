"""The broker's YAML config file as the command line names it (``--config`` or
``BROKER_CONFIG``), and the one start-up check that ``check``, ``serve``, ``demo`` and
``wsgi.py`` share: load, validate and build everything that is local to the config,
reporting every problem at once and exiting 1, never with a traceback."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from flask import Flask

    from identity.config.document import BrokerConfig
    from identity.errors import ConfigError

CONFIG_ENV = "BROKER_CONFIG"


def exit_with_report(source: str, error: ConfigError) -> NoReturn:
    """Print ``error``'s problems on stderr, one per line, and exit with status 1."""
    print(f"{source}: {len(error.problems)} problem(s)", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)
    raise SystemExit(1)


def load_or_exit(path: str, *, offline: bool = False) -> BrokerConfig:
    """The config at ``path``, validated, with every provider and the store's location
    checked as start-up builds them (``identity.wiring.verify``); no IdP or AWS is
    contacted. Problems are reported on stderr and the process exits with status 1.

    ``offline``: references that cannot be resolved here (a secret that only production
    has) stand in as placeholders, and nothing that depends on their value is checked."""
    from identity.config.document import load_config
    from identity.config.source import References, env_resolver
    from identity.errors import ConfigError
    from identity.wiring import verify
    from service.endpoints import Endpoints

    references = References({"env": env_resolver(os.environ)}, placeholders=offline)
    try:
        config = load_config(path, references=references)
        verify(config, Endpoints(config.service.public_url))
    except ConfigError as e:
        exit_with_report(path, e)
    return config


def app_from_environment() -> Flask:
    """The WSGI app for the config file named by ``BROKER_CONFIG``; a config that cannot
    serve is reported on stderr and the process exits with status 1."""
    from identity.config.document import load_config
    from identity.errors import ConfigError
    from service.app import create_app

    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(f"{CONFIG_ENV} must name the broker's YAML config file", file=sys.stderr)
        raise SystemExit(1)
    try:
        return create_app(load_config(path))
    except ConfigError as e:
        exit_with_report(path, e)
