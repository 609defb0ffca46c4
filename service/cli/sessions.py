"""``chime-broker sessions``: revoke or list broker sessions through the store that the
running brokers share (the config's ``store``: SQLite, Redis or DynamoDB)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from service.cli.config_file import load_or_exit

if TYPE_CHECKING:
    from identity.broker import Broker

REVOKE_EXAMPLES = """\
examples:
  # end every session of one user, on every broker sharing the store
  chime-broker sessions revoke --config broker.yaml --user okta-00u1abc
  # the same, only for sessions that came from the provider "okta"
  chime-broker sessions revoke --config broker.yaml --user okta-00u1abc --provider okta
  # end every session that came from the provider "okta"
  chime-broker sessions revoke --config broker.yaml --provider okta
  # end every session
  chime-broker sessions revoke --config broker.yaml --all

The JSON printed includes "deny_policy": attach it to the user role to cut off AWS
credentials that were issued before the revocation (AWS cannot revoke them otherwise)."""

_LIST_LINES = """\
  chime-broker sessions list --config broker.yaml --user okta-00u1abc
  chime-broker sessions list --config broker.yaml --user okta-00u1abc --provider okta"""
LIST_EXAMPLES = "examples:\n" + _LIST_LINES


@contextmanager
def _broker(config_path: str) -> Iterator[Broker]:
    """The broker of the config, on the config's store; exits 1 with a message when the
    store cannot be used."""
    from identity.errors import ConfigError, StoreError
    from identity.wiring import build_services
    from service.cli.config_file import exit_with_report
    from service.endpoints import Endpoints

    config = load_or_exit(config_path)
    if config.store.split("://", 1)[0].lower() == "memory":
        print(
            f"{config_path}: store is memory://, which only the serving process can see; "
            "sessions commands need the SQLite, Redis or DynamoDB store the brokers share",
            file=sys.stderr,
        )
        raise SystemExit(1)
    try:
        services = build_services(config, Endpoints(config.service.public_url))
    except ConfigError as e:
        exit_with_report(config_path, e)
    except (StoreError, ValueError) as e:
        print(f"{config_path}: cannot open the store: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        yield services.broker
    finally:
        services.store.close()


def _run(config_path: str, action: Callable[[Broker], dict[str, Any]]) -> int:
    from identity.errors import StoreError

    with _broker(config_path) as broker:
        try:
            output = action(broker)
        except StoreError as e:
            print(f"{config_path}: the store failed: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"{config_path}: {e}", file=sys.stderr)
            return 2
    print(json.dumps(output, indent=2))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from identity import session_admin

    if args.all and (args.user or args.provider):
        print("sessions revoke: --all takes neither --user nor --provider", file=sys.stderr)
        return 2
    if not (args.all or args.user or args.provider):
        print("sessions revoke: give --user, --provider or --all", file=sys.stderr)
        return 2

    def action(broker: Broker) -> dict[str, Any]:
        if args.all:
            return session_admin.revoke_all(broker).report()
        if args.user:
            return session_admin.revoke_user(broker, args.user, args.provider).report()
        return session_admin.revoke_provider(broker, args.provider).report()

    return _run(args.config, action)


def cmd_list(args: argparse.Namespace) -> int:
    from identity import session_admin

    return _run(
        args.config, lambda broker: session_admin.list_user(broker, args.user, args.provider)
    )


def add_sessions_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sessions revoke`` and ``sessions list``."""
    parser = subparsers.add_parser(
        "sessions",
        help="revoke or list broker sessions in the shared store",
        description="Revoke or list broker sessions in the store that the running brokers "
        "share (the config's store: SQLite, Redis or DynamoDB).",
        epilog=REVOKE_EXAMPLES + "\n\nlisting a user's live sessions:\n" + _LIST_LINES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="sessions_command", required=True)

    revoke = commands.add_parser(
        "revoke",
        help="end sessions at once on every broker sharing the store",
        description="End, at once and on every broker sharing the store, every session of "
        "a user (--user, optionally only those from --provider), of a provider "
        "(--provider alone) or every session (--all); drop the user's cached credentials; "
        "print the IAM deny policy for credentials already issued.",
        epilog=REVOKE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    revoke.add_argument("--config", required=True, help="the broker's YAML config")
    revoke.add_argument("--user", default=None, help="the user id (as the broker maps it)")
    revoke.add_argument("--provider", default=None, help="the provider's name in the config")
    revoke.add_argument("--all", action="store_true", help="revoke every session")
    revoke.set_defaults(func=cmd_revoke)

    listing = commands.add_parser(
        "list",
        help="count a user's live sessions",
        description="Print the number of a user's live sessions and when each was created "
        "and expires (never a token).",
        epilog=LIST_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--config", required=True, help="the broker's YAML config")
    listing.add_argument("--user", required=True, help="the user id (as the broker maps it)")
    listing.add_argument("--provider", default=None, help="only sessions from this provider")
    listing.set_defaults(func=cmd_list)
