"""``chime-broker demo``: run the embedded demo (in-process AWS and a development IdP)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from service.cli.loopback import is_loopback_host


def cmd_demo(args: argparse.Namespace) -> int:
    if not is_loopback_host(args.host):
        print("the demo binds loopback addresses only", file=sys.stderr)
        return 2
    if importlib.util.find_spec("moto") is None:
        print(
            "the demo runs an in-process AWS (moto), which is not installed: "
            "pip install 'chime-identity-broker[demo]'",
            file=sys.stderr,
        )
        return 1
    from service.demo.launcher import run_demo

    run_demo(config_path=args.config, host=args.host, port=args.port, idp_port=args.idp_port)
    return 0


def add_demo_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser("demo", help="run the embedded demo (in-process AWS and IdP)")
    parser.add_argument("--config", default=None, help="default: the packaged config/demo.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--idp-port", type=int, default=8001)
    parser.set_defaults(func=cmd_demo)
