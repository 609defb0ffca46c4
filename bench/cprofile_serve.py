"""``chime-broker serve`` with a cProfile switch in every worker, for ``--profile`` where
py-spy may not attach (no ptrace):

    BENCH_PROFILE_DIR=DIR python -m bench.cprofile_serve --config broker.yaml --bind ...

The arguments are ``chime-broker serve``'s; for another gunicorn app the module is a
gunicorn config (``--config python:bench.cprofile_serve``). Each worker, once it has loaded
the app, answers SIGUSR2: the first starts a ``cProfile.Profile`` (and writes
``DIR/worker-<pid>.on``), the next stops it and writes ``DIR/worker-<pid>.prof``. Until
then nothing is profiled, so the server costs what ``chime-broker serve`` costs.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"
SWITCH_SIGNAL = signal.SIGUSR2


def post_worker_init(_worker: Any) -> None:
    """gunicorn's ``post_worker_init``: SIGUSR2 turns this worker's profiler on, then off."""
    directory = Path(os.environ[PROFILE_DIR_ENV])
    profiler: list[cProfile.Profile] = []

    def switch(_signum: int, _frame: FrameType | None) -> None:
        pid = os.getpid()
        if not profiler:
            profiler.append(cProfile.Profile())
            profiler[0].enable()
            (directory / f"worker-{pid}.on").touch()
            return
        profiler[0].disable()
        partial = directory / f"worker-{pid}.prof.partial"
        profiler.pop().dump_stats(partial)
        partial.replace(directory / f"worker-{pid}.prof")  # whole, or not there at all

    signal.signal(SWITCH_SIGNAL, switch)


def main(argv: Sequence[str] | None = None) -> int:
    import service.server
    from service.cli import main as cli_main

    class SwitchableBrokerServer(service.server.BrokerServer):
        def load_config(self) -> None:
            super().load_config()
            self.cfg.set("post_worker_init", post_worker_init)

    # serve() builds its application from this name; the bench's launcher swaps it
    service.server.BrokerServer = SwitchableBrokerServer  # type: ignore[misc]
    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
