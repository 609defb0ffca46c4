"""CPU time of a gunicorn server's workers, read from ``/proc``.

A worker's ``utime + stime`` (fields 14 and 15 of ``/proc/<pid>/stat``) counts every
thread it has run; a worker that exited and was reaped during a window has its time added
to the master's ``cutime + cstime`` (fields 16 and 17), so the total below loses nothing
when gunicorn replaces a worker. The master's own time (its arbiter loop) is not counted.
Requests/s moves with whatever else runs on the machine; CPU seconds per request much
less, as long as the servers are not starved outright.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerCpu", "children", "process_times"]

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    text = (_PROC / str(pid) / "stat").read_text()
    # the command name is in parentheses and may itself contain spaces or parentheses
    return text[text.rindex(")") + 2 :].split()


def process_times(pid: int) -> tuple[float, float]:
    """``(own, reaped children)`` CPU seconds of ``pid``: utime+stime and cutime+cstime."""
    fields = _stat_fields(pid)
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / _TICKS_PER_SECOND, (cutime + cstime) / _TICKS_PER_SECOND


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``: from ``/proc/<pid>/task/*/children`` where the
    kernel provides it, else by scanning every process's parent."""
    found: list[int] = []
    tasks = list((_PROC / str(pid) / "task").glob("*/children"))
    if tasks:
        for path in tasks:
            try:
                found.extend(int(p) for p in path.read_text().split())
            except OSError:
                continue
        return found
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@dataclass(frozen=True)
class ServerCpu:
    """The CPU seconds a gunicorn master's workers have used, read on demand."""

    master_pid: int

    def worker_pids(self) -> list[int]:
        return children(self.master_pid)

    def seconds(self) -> float:
        """The workers' CPU seconds so far: live workers' own time plus the time of
        workers the master has reaped."""
        _, reaped = process_times(self.master_pid)
        total = reaped
        for pid in self.worker_pids():
            try:
                total += process_times(pid)[0]
            except (OSError, ValueError, IndexError):
                continue  # exited between the listing and the read: reaped time covers it
        return total
