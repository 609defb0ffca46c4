"""``chime-broker template``: print a CloudFormation template that deploys the broker."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.cli.config_file import load_or_exit

TARGETS = ("lambda",)


def cmd_template(args: argparse.Namespace) -> int:
    """Print the template for ``--target`` as JSON; exit 1 when the config cannot run there."""
    from identity import lambda_template

    # Offline: the template needs no secret's value, only the names of the references.
    config = load_or_exit(args.config, offline=True)
    try:
        references = lambda_template.aws_references(Path(args.config).read_text())
        template = lambda_template.lambda_template(config, references)
    except ValueError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(template, indent=2))
    return 0


def add_template_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``template`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser(
        "template",
        help="print a CloudFormation template that deploys the broker",
        description="Print a CloudFormation template (JSON) that deploys the broker for a "
        "config. lambda: an AWS Lambda function behind an HTTP API, running as the server "
        "role, with the user role of `chime-broker policies`, the DynamoDB table of a "
        "dynamodb:// store and read access to the config's ${ssm:...} and "
        "${secretsmanager:...} references. memory:// and sqlite:// stores are refused.",
        epilog="example: chime-broker template --config broker.yaml --target lambda "
        "> template.json",
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--target", required=True, choices=TARGETS)
    parser.set_defaults(func=cmd_template)
