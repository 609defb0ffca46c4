"""``chime-broker plan`` and ``chime-broker apply``: the identity pool's logins, principal-tag
maps and authenticated role, from the config.

``plan`` changes nothing and exits 0 when the pool matches, 2 when it differs, 1 on errors.
``apply`` makes the same changes after a confirmation (``--yes`` skips it; without a
terminal it is required) and exits 0 when the pool matches afterwards, 1 otherwise."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from service.cli.config_file import load_or_exit

if TYPE_CHECKING:
    from identity.aws import AwsClients
    from identity.config.document import BrokerConfig
    from identity.pool_plan import PoolPlan

EXIT_SAME = 0
EXIT_ERROR = 1
EXIT_DIFFERS = 2


def _clients(config: BrokerConfig) -> AwsClients:
    from identity.aws import AwsClients

    return AwsClients(config, max_pool_connections=4)


def _planned(config: BrokerConfig, clients: AwsClients, source: str) -> PoolPlan | None:
    """The plan, or ``None`` after printing why there is none."""
    from botocore.exceptions import BotoCoreError, ClientError

    from identity.pool_plan import PoolError, make_plan

    try:
        return make_plan(config, clients)
    except PoolError as e:
        print(f"{source}: {e}", file=sys.stderr)
    except (ClientError, BotoCoreError) as e:
        print(f"{source}: AWS: {e}", file=sys.stderr)
    return None


def _role_lines(
    config: BrokerConfig, clients: AwsClients, args: argparse.Namespace
) -> tuple[list[str], bool] | None:
    """The user roles' differences (lines, whether any), or ``None`` after printing why
    there are none."""
    from botocore.exceptions import BotoCoreError, ClientError

    from identity.role_plan import RoleError, make_role_plan

    try:
        plan = make_role_plan(config, clients.iam, server_role_arn=args.server_role_arn)
    except RoleError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
    except (ClientError, BotoCoreError) as e:
        print(f"{args.config}: AWS: {e}", file=sys.stderr)
    else:
        return plan.lines(args.config), plan.differs
    return None


def cmd_plan(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    clients = _clients(config)
    differs = False
    if not args.roles or config.aws.cognito is not None:
        plan = _planned(config, clients, args.config)
        if plan is None:
            return EXIT_ERROR
        print("\n".join(plan.lines()))
        differs = plan.differs
    if args.roles:
        roles = _role_lines(config, clients, args)
        if roles is None:
            return EXIT_ERROR
        lines, roles_differ = roles
        print("\n".join(lines))
        differs = differs or roles_differ
    return EXIT_DIFFERS if differs else EXIT_SAME


def _confirmed(plan: PoolPlan, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(
            "apply: not a terminal, so nobody can confirm: run again with --yes to apply "
            "these changes",
            file=sys.stderr,
        )
        return False
    try:
        answer = input(f"apply {len(plan.changes)} change(s) to {plan.pool_id}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("apply: nothing changed", file=sys.stderr)
    return False


def cmd_apply(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from identity.pool_plan import PoolError, apply_plan

    config = load_or_exit(args.config)
    clients = _clients(config)
    plan = _planned(config, clients, args.config)
    if plan is None:
        return EXIT_ERROR
    print("\n".join(plan.lines()))
    if not plan.differs:
        return EXIT_SAME
    if not _confirmed(plan, args.yes):
        return EXIT_ERROR
    try:
        apply_plan(config, clients, plan)
    except PoolError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ClientError, BotoCoreError) as e:
        print(f"{args.config}: AWS: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(f"applied {len(plan.changes)} change(s) to {plan.pool_id}")
    return EXIT_SAME


def add_pool_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plan`` and ``apply`` on the ``chime-broker`` subcommand parsers."""
    plan = subparsers.add_parser(
        "plan",
        help="show how the identity pool differs from the config",
        description="Compare the identity pool named by aws.cognito.identity_pool_id with "
        "the config: the logins of exchange: cognito providers, their principal-tag maps, "
        "the developer provider name and the authenticated role (aws.cognito.role_arn). "
        "Changes nothing. Exit 0: no differences; 2: differences; 1: error.",
        epilog="example: chime-broker plan --config /etc/chime-broker/broker.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--config", required=True)
    plan.add_argument(
        "--roles",
        action="store_true",
        help="also compare the user roles' trust and permission policies in IAM with what "
        "chime-broker policies prints (apply never changes IAM roles)",
    )
    plan.add_argument(
        "--server-role-arn",
        default=None,
        help="with --roles: the role the broker runs as, which the exchange: sts roles "
        "must trust (default as for chime-broker policies)",
    )
    plan.set_defaults(func=cmd_plan)

    apply = subparsers.add_parser(
        "apply",
        help="make the identity pool match the config",
        description="Make the changes that plan shows. Logins, OIDC, SAML and user-pool "
        "providers that the broker does not own are kept as they are. Asks for "
        "confirmation on a terminal; --yes skips it and is required without a terminal.",
        epilog="example: chime-broker apply --config /etc/chime-broker/broker.yaml --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("--config", required=True)
    apply.add_argument("--yes", action="store_true", help="apply without asking")
    apply.set_defaults(func=cmd_apply)
