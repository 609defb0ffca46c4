"""``--profile``: where the server's CPU goes while one row's load runs.

With py-spy installed (``pip install -e '.[bench]'``) and ptrace allowed, py-spy samples
the gunicorn master and its workers (``record --subprocesses``) and writes a flame graph
(SVG). Otherwise the broker runs under `bench.cprofile_serve`, whose workers start and
stop a ``cProfile.Profile`` on SIGUSR2; their dumps are merged into one ``.prof`` file and
a text summary. Either way the profile is taken in a pass of its own after the row's
measured run, so the table's figures are never taken under a profiler.
"""

from __future__ import annotations

import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.cpu import children

__all__ = ["CPROFILE", "PY_SPY", "choose_profiler", "cprofile_pass", "py_spy_pass"]

PY_SPY = "py-spy"
CPROFILE = "cprofile"
_YAMA_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


def py_spy_executable() -> str | None:
    """py-spy next to this interpreter (the virtualenv's), else on ``PATH``."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def _ptrace_allowed(py_spy: str) -> bool:
    """Whether py-spy can read a process that is not its child, as the servers are: Yama's
    scope 3 forbids it outright; otherwise a sleeping interpreter is tried."""
    try:
        if _YAMA_SCOPE.read_text().strip() == "3":
            return False
    except OSError:
        pass  # no Yama: ptrace follows the ordinary permission checks
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        probe = subprocess.run(
            [py_spy, "dump", "--pid", str(target.pid)], capture_output=True, timeout=30
        )
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        target.kill()
        target.wait()


def choose_profiler(requested: str) -> tuple[str, str]:
    """``(profiler, why)`` for ``--profiler`` ``auto``, ``py-spy`` or ``cprofile``."""
    if requested == CPROFILE:
        return CPROFILE, "asked for"
    py_spy = py_spy_executable()
    if py_spy is None:
        if requested == PY_SPY:
            raise SystemExit("--profiler py-spy: py-spy is not installed (pip install py-spy)")
        return CPROFILE, "py-spy is not installed"
    if not _ptrace_allowed(py_spy):
        if requested == PY_SPY:
            raise SystemExit("--profiler py-spy: ptrace is not allowed here")
        return CPROFILE, "ptrace is not allowed"
    return PY_SPY, "ptrace is allowed"


def _wait_for(condition: Callable[[], bool], what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {limit:g} s")
        time.sleep(0.05)


@contextmanager
def py_spy_pass(master_pid: int, output: Path, log: Path) -> Iterator[None]:
    """py-spy records the server while the body runs, then writes ``output`` (SVG)."""
    py_spy = py_spy_executable()
    if py_spy is None:
        raise RuntimeError("py-spy is not installed")
    argv = [
        py_spy, "record", "--pid", str(master_pid), "--subprocesses",
        "--format", "flamegraph", "--output", str(output), "--rate", "100",
    ]  # fmt: skip
    with log.open("wb") as log_file:
        recorder = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_for(
                lambda: b"Sampling process" in log.read_bytes() or recorder.poll() is not None,
                "py-spy did not start sampling",
                30,
            )
            if recorder.poll() is not None:
                raise RuntimeError(f"py-spy exited: {log.read_text(errors='replace')[-500:]}")
            yield
        finally:
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
    if not output.exists():
        raise RuntimeError(f"py-spy wrote no {output}: {log.read_text(errors='replace')[-500:]}")


@contextmanager
def cprofile_pass(master_pid: int, dump_dir: Path, output: Path) -> Iterator[None]:
    """Every worker of a `bench.cprofile_serve` server profiles while the body runs; the
    merged statistics go to ``output`` (``.prof``) and a summary to ``output`` ``.txt``."""
    workers = children(master_pid)
    if not workers:
        raise RuntimeError(f"gunicorn master {master_pid} has no workers")
    for pid in workers:
        os.kill(pid, signal.SIGUSR2)
    _wait_for(
        lambda: all((dump_dir / f"worker-{pid}.on").exists() for pid in workers),
        "the workers did not start profiling",
        10,
    )
    try:
        yield
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGUSR2)
    dumps = [dump_dir / f"worker-{pid}.prof" for pid in workers]
    # a worker writes its dump at its next Python instruction, within a second when idle
    _wait_for(lambda: all(d.exists() for d in dumps), "the workers wrote no profile", 30)
    stats = pstats.Stats(*(str(d) for d in dumps))
    stats.dump_stats(output)
    with output.with_suffix(".txt").open("w", encoding="utf-8") as text:
        merged = pstats.Stats(str(output), stream=text)
        merged.strip_dirs()
        text.write(f"cProfile of {len(workers)} workers, merged\n\n")
        merged.sort_stats("tottime").print_stats(40)
        merged.sort_stats("cumulative").print_stats(40)
