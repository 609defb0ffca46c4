"""``chime-broker check``: validate a config file and print a summary."""

from __future__ import annotations

import argparse

from service.cli.config_file import load_or_exit


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    print(f"{args.config}: ok")
    print(config.summary())
    return 0


def add_check_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``check`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser("check", help="validate a config file and print a summary")
    parser.add_argument("--config", required=True)
    parser.set_defaults(func=cmd_check)
