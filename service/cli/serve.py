"""``chime-broker serve``: run the broker under gunicorn."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from service.cli.config_file import CONFIG_ENV, load_or_exit
from service.cli.loopback import is_loopback_host


def _refusal(args: argparse.Namespace) -> int:
    """0 when the config can serve as asked; else report why and return the exit status."""
    config = load_or_exit(args.config, reach_store=True)
    host = args.bind.rsplit(":", 1)[0]
    if config.is_demo and not is_loopback_host(host):
        print("mode: demo binds loopback addresses only", file=sys.stderr)
        return 2
    if config.store.startswith("memory://") and args.workers > 1 and not config.is_demo:
        print(
            "store: memory:// keeps state inside one process; with --workers "
            f"{args.workers} use sqlite://, redis:// or dynamodb://",
            file=sys.stderr,
        )
        return 2
    return 0


def _refusal_in_child(args: argparse.Namespace) -> int:
    """``_refusal`` in a forked child: building the providers imports the HTTP and TLS
    stack, which gevent workers must patch before anything imports it, so the master
    process that forks them never does."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = _refusal(args)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.config is None:
        print(f"--config or {CONFIG_ENV} is required", file=sys.stderr)
        return 2
    refusal = _refusal_in_child(args)
    if refusal:
        return refusal
    # Multi-process metrics must be configured before prometheus_client is imported.
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chime-broker-metrics-")
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


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` on the ``chime-broker`` subcommand parsers."""
    parser = subparsers.add_parser("serve", help="run the broker under gunicorn")
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV))
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread", "sync"])
    parser.add_argument(
        "--worker-connections", type=int, default=256, help="gevent: concurrent requests/worker"
    )
    parser.add_argument("--threads", type=int, default=8, help="gthread: threads per worker")
    parser.add_argument("--timeout", type=int, default=30)
    parser.set_defaults(func=cmd_serve)
