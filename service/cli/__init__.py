"""The ``chime-broker`` command: ``main()`` assembles one parser from the subcommand modules
(check, serve, policies, demo, plan, apply, explain, store, ...), each of which registers its
arguments and its function.

Importing the command stays light: ``serve`` configures multi-process metrics before
prometheus_client is imported, so subcommands import the broker inside their functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from service.cli.check import add_check_parser
from service.cli.config_file import app_from_environment
from service.cli.credential_process import add_credential_process_parser
from service.cli.demo import add_demo_parser
from service.cli.explain import add_explain_parser
from service.cli.login import add_login_parser
from service.cli.policies import add_policies_parser
from service.cli.pool import add_pool_parsers
from service.cli.serve import add_serve_parser
from service.cli.sessions import add_sessions_parser
from service.cli.store import add_store_parser
from service.cli.template import add_template_parser
from service.version import package_version

__all__ = ["app_from_environment", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chime-broker",
        description="Chime Identity Broker: identity provider logins to Chime app instance "
        "user credentials.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_check_parser(subparsers)
    add_serve_parser(subparsers)
    add_policies_parser(subparsers)
    add_demo_parser(subparsers)
    add_pool_parsers(subparsers)
    add_sessions_parser(subparsers)
    add_explain_parser(subparsers)
    add_login_parser(subparsers)
    add_credential_process_parser(subparsers)
    add_template_parser(subparsers)
    add_store_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
