"""gunicorn, configured from the command line; the app is built in each worker after the
fork, so AWS clients and store connections are never shared between processes."""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from service.logs import gunicorn_logconfig

GEVENT_WORKER = "service.gevent_worker.BrokerGeventWorker"


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class BrokerLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, but its access line is built only when a handler would take it:
    with a ``logconfig_dict`` gunicorn formats every request's atoms even while its access
    logger sits at warning (the broker writes its own access line)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


class BrokerServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config_path: str, options: dict[str, Any]) -> None:
        self.config_path = config_path
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from identity.config.document import load_config
        from identity.errors import ConfigError
        from service import create_app
        from service.cli.config_file import exit_with_report

        try:
            return create_app(load_config(self.config_path))
        except ConfigError as e:
            exit_with_report(self.config_path, e)


def serve(
    *,
    config_path: str,
    bind: str,
    workers: int,
    worker_class: str,
    worker_connections: int,
    threads: int,
    timeout: int,
) -> None:
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        # gevent: gunicorn's worker, sending each response in one write (service.gevent_worker)
        "worker_class": GEVENT_WORKER if worker_class == "gevent" else worker_class,
        "timeout": timeout,
        "graceful_timeout": 10,
        "accesslog": None,
        "logconfig_dict": gunicorn_logconfig(),
        "logger_class": BrokerLogger,
        "child_exit": _child_exit,
        "preload_app": False,
        # One shared control socket under $HOME would make two brokers on one host collide.
        "control_socket_disable": True,
    }
    if worker_class == "gevent":
        options["worker_connections"] = worker_connections
    if worker_class == "gthread":
        options["threads"] = threads
    concurrency = worker_connections if worker_class == "gevent" else threads
    os.environ["CHIME_BROKER_CONCURRENCY"] = str(concurrency if worker_class != "sync" else 1)
    BrokerServer(config_path, options).run()
