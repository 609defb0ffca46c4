"""``chime-broker store init``: create the store's DynamoDB table as the broker expects it."""

from __future__ import annotations

import argparse
import os
import sys

from service.cli.config_file import CONFIG_ENV, load_or_exit


def cmd_store_init(args: argparse.Namespace) -> int:
    from identity.dynamodb_store import create_table, table_from_url
    from identity.errors import StoreError

    if args.config is None:
        print(f"--config or {CONFIG_ENV} is required", file=sys.stderr)
        return 2
    config = load_or_exit(args.config)
    if config.store_scheme.lower() != "dynamodb":
        print(f"store: {config.store_scheme}:// needs no table; nothing to create")
        return 0
    table, region = table_from_url(config.store), config.aws.region
    try:
        setup = create_table(table, region=region)
    except StoreError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    if setup.created:
        print(f"created DynamoDB table {table} in {region} (on-demand, TTL on expires_at)")
    elif setup.ttl_enabled:
        print(f"DynamoDB table {table} in {region} already exists; enabled TTL on expires_at")
    else:
        print(f"DynamoDB table {table} in {region} already exists (TTL on expires_at)")
    return 0


def add_store_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``store init`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser("store", help="set up the broker's state store")
    actions = parser.add_subparsers(dest="store_command", required=True)
    init = actions.add_parser(
        "init",
        help="create the DynamoDB table of a dynamodb:// store",
        description="Create the table a dynamodb://TABLE store names, in aws.region: "
        "partition key pk, on-demand billing, TTL on expires_at. Waits until the table is "
        "active; enables TTL on a table that exists without it. Safe to run again. Other "
        "stores need no set-up.",
        epilog="example: chime-broker store init --config /etc/chime-broker/broker.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--config", default=os.environ.get(CONFIG_ENV))
    init.set_defaults(func=cmd_store_init)
