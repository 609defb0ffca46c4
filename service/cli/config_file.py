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
APP_LOAD_ERROR = 4
"""``wsgi.py``'s exit status for a config that cannot serve: gunicorn's "App failed to
load", which stops the server instead of starting the worker again and again."""
DEMO_OUTSIDE_CLI = (
    "mode: demo serves only under `chime-broker demo` or `chime-broker serve` (which bind "
    "loopback addresses only); a WSGI server or AWS Lambda needs mode: production"
)


def print_report(source: str, error: ConfigError) -> None:
    """Print ``error``'s problems on stderr, one per line."""
    print(f"{source}: {len(error.problems)} problem(s)", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def exit_with_report(source: str, error: ConfigError, *, status: int = 1) -> NoReturn:
    """Print ``error``'s problems on stderr, one per line, and exit with ``status``."""
    print_report(source, error)
    raise SystemExit(status)


def load_or_exit(path: str, *, offline: bool = False, reach_store: bool = False) -> BrokerConfig:
    """The config at ``path``, validated, with every provider and the store's location
    checked as start-up builds them (``identity.wiring.verify``); no IdP is contacted, and
    AWS only to read ``${ssm:…}`` and ``${secretsmanager:…}`` references (never ``offline``)
    and with ``reach_store``. Problems are reported on stderr and the process exits
    with status 1.

    ``offline``: references that cannot be resolved here (a secret that only production
    has) stand in as placeholders, and nothing that depends on their value is checked.
    ``reach_store``: also look up the store where start-up does (a DynamoDB table)."""
    from identity.config.document import default_references, load_config
    from identity.errors import ConfigError
    from identity.wiring import check_store, verify
    from service.endpoints import Endpoints

    references = default_references(placeholders=offline)
    try:
        config = load_config(path, references=references)
        verify(config, Endpoints(config.service.public_url))
        if reach_store:
            check_store(config)
    except ConfigError as e:
        exit_with_report(path, e)
    return config


def app_from_environment() -> Flask:
    """The WSGI app for the config file named by ``BROKER_CONFIG``; a config that cannot
    serve is reported on stderr and the process exits with status ``APP_LOAD_ERROR``.
    ``mode: demo`` cannot serve here: its open guests and plain http are for loopback,
    which only the command line's ``demo`` and ``serve`` enforce. On AWS Lambda the
    store must be one that every instance shares, and the problems are also the message of
    the ``LambdaStartupError`` raised, which Lambda reports as the function's init error."""
    from identity.config.document import load_config
    from identity.errors import ConfigError
    from service.app import create_app
    from service.lambda_handler import LambdaStartupError, lambda_config_problems, on_lambda

    path = os.environ.get(CONFIG_ENV)
    if not path:
        message = f"{CONFIG_ENV} must name the broker's YAML config file"
        print(message, file=sys.stderr)
        if on_lambda(os.environ):
            raise LambdaStartupError(message)
        raise SystemExit(APP_LOAD_ERROR)
    try:
        config = load_config(path)
        problems = [DEMO_OUTSIDE_CLI] if config.is_demo else []
        problems += lambda_config_problems(config, os.environ)
        if problems:
            raise ConfigError(problems)
        return create_app(config)
    except ConfigError as e:
        if not on_lambda(os.environ):
            exit_with_report(path, e, status=APP_LOAD_ERROR)
        print_report(path, e)
        raise LambdaStartupError("\n".join(e.problems)) from None
