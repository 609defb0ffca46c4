"""The ``chime-broker`` command: check, serve, demo."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

DEFAULT_CONFIG_ENV = "BROKER_CONFIG"


def app_from_environment() -> Flask:
    """The WSGI app for the config file named by ``BROKER_CONFIG``."""
    from identity.config import load_config
    from service import create_app

    path = os.environ.get(DEFAULT_CONFIG_ENV)
    if not path:
        raise SystemExit(f"{DEFAULT_CONFIG_ENV} must name the broker's YAML config file")
    return create_app(load_config(path))


def load_or_exit(path: str) -> Any:
    from identity.config import load_config
    from identity.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as e:
        print(f"{path}: {len(e.problems)} problem(s)", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    print(f"{args.config}: ok")
    print(config.summary())
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    # Multi-process metrics must be configured before prometheus_client is imported.
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chime-broker-metrics-")
    config = load_or_exit(args.config)
    host = args.bind.rsplit(":", 1)[0]
    if config.is_demo and not _is_loopback(host):
        print("mode: demo binds loopback addresses only", file=sys.stderr)
        return 2
    if config.store.startswith("memory://") and args.workers > 1 and not config.is_demo:
        print(
            "store: memory:// keeps state inside one process; with --workers "
            f"{args.workers} use sqlite:// or redis://",
            file=sys.stderr,
        )
        return 2
    from service.server import serve

    serve(
        config_path=args.config,
        bind=args.bind,
        workers=args.workers,
        worker_class=args.worker_class,
        worker_connections=args.worker_connections,
        threads=args.threads,
        timeout=args.timeout,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if not _is_loopback(args.host):
        print("the demo binds loopback addresses only", file=sys.stderr)
        return 2
    from service.demo.launcher import run_demo

    run_demo(config_path=args.config, host=args.host, port=args.port, idp_port=args.idp_port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from service.policies_cli import add_policies_parser

    parser = argparse.ArgumentParser(
        prog="chime-broker",
        description="Chime Identity Broker: identity provider logins to Chime app instance "
        "user credentials.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check)

    serve = sub.add_parser("serve", help="run the broker under gunicorn")
    serve.add_argument("--config", default=os.environ.get(DEFAULT_CONFIG_ENV))
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    serve.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread", "sync"])
    serve.add_argument(
        "--worker-connections", type=int, default=256, help="gevent: concurrent requests/worker"
    )
    serve.add_argument("--threads", type=int, default=8, help="gthread: threads per worker")
    serve.add_argument("--timeout", type=int, default=30)
    serve.set_defaults(func=cmd_serve)

    add_policies_parser(sub)

    demo = sub.add_parser("demo", help="run the embedded demo (in-process AWS and IdP)")
    demo.add_argument("--config", default=None, help="default: the packaged config/demo.yaml")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--idp-port", type=int, default=8001)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", "") is None and args.command == "serve":
        print(f"--config or {DEFAULT_CONFIG_ENV} is required", file=sys.stderr)
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
