"""``chime-broker check``: validate a config file and print a summary."""

from __future__ import annotations

import argparse

from identity.config.report import format_path
from service.cli.config_file import load_or_exit


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config, offline=args.offline, reach_store=not args.offline)
    print(f"{args.config}: ok")
    print(config.summary())
    for where, message in config.warnings():
        provider = (
            f" ({config.providers[where[1]].name})"
            if where[0] == "providers" and isinstance(where[1], int)
            else ""
        )
        print(f"warning: {format_path(where)}{provider}: {message}")
    if config.placeholders:
        print(
            "offline: not resolved, and not checked beyond their syntax: "
            + ", ".join(config.placeholders)
        )
    return 0


def add_check_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``check`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser(
        "check",
        help="validate a config file and print a summary",
        description="Validate a config file and build everything that serve builds from it "
        "(providers, keys, metadata files, the store's location) without contacting an IdP; "
        "a DynamoDB store's table is looked up unless --offline, which contacts no AWS. "
        "Every problem is listed with its YAML path and line; exit 1 if any.",
        epilog="example: chime-broker check --config /etc/chime-broker/broker.yaml\n"
        "         chime-broker check --offline --config broker.yaml   # in CI, without secrets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--offline",
        action="store_true",
        help="treat ${env:...} references that are not set as placeholders (CI without the "
        "production secrets)",
    )
    parser.set_defaults(func=cmd_check)
