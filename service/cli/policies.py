"""``chime-broker policies``: print the IAM documents an admin creates for a config."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli.config_file import load_or_exit

FORMATS = ("json", "cloudformation")


def cmd_policies(args: argparse.Namespace) -> int:
    """Print every document as one JSON object keyed by document name, or a CloudFormation
    template (JSON) that creates the roles."""
    from identity import policies

    config = load_or_exit(args.config, offline=args.offline)
    output: dict[str, Any]
    try:
        if args.format == "cloudformation":
            output = policies.cloudformation_template(config)
        else:
            output = policies.all_documents(
                config,
                server_role_arn=args.server_role_arn,
                broker_principal=args.broker_principal,
            )
    except ValueError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(output, indent=2))
    return 0


def add_policies_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``policies`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser(
        "policies",
        help="print the IAM policies and roles that a config needs",
        description="Print the user role's permission and trust policies and the server "
        "role's policies for a config, as JSON keyed by document name or as a "
        "CloudFormation template.",
        epilog="example: chime-broker policies --config broker.yaml --format cloudformation",
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--format", choices=FORMATS, default="json")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="treat ${env:...} references that are not set as placeholders",
    )
    parser.add_argument(
        "--server-role-arn",
        default=None,
        help="json: the role the broker runs as, trusted by the user role for exchange: sts "
        "(default: arn:aws:iam::ACCOUNT:role/chime-broker-server in the app instance's "
        "account); the template creates its own",
    )
    parser.add_argument(
        "--broker-principal",
        default=None,
        help="json: who may use the server role, a service principal such as "
        "ecs-tasks.amazonaws.com or an IAM principal ARN (default: the account root); "
        "the template takes it as a parameter",
    )
    parser.set_defaults(func=cmd_policies)
