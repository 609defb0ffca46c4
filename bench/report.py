"""The benchmark's markdown report: the machine and settings, then one row per cell."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult

UPSTREAM_NAMES = {
    "moto": "moto server",
    "instant": "instant fake",
    "25ms": "fake, 25 ms per call",
}


ENDPOINTS = {"token": "POST /v1/token", "credentials": "POST /v1/credentials"}
HANDLER_NAMES = {
    "new": "broker, new session each time",
    "returning": "broker, returning users",
    "broker": "broker",
    "naive": "naive",
}


@dataclass(frozen=True)
class RowSpec:
    """What one row measures: a handler on an endpoint, in an exchange mode, against an
    upstream. ``handler`` is ``new`` (a broker whose every new session vends), ``returning``
    (the broker as configured by default: a user's credentials are reused across sessions),
    ``naive``, or for ``POST /v1/credentials`` ``broker`` (the default broker's sessions)."""

    upstream: str
    endpoint: str
    exchange: str
    handler: str

    @property
    def id(self) -> str:
        """The row's name for ``--profile``."""
        return f"{self.upstream}:{self.endpoint}:{self.exchange}:{self.handler}"


@dataclass(frozen=True)
class Row:
    """One measured row: the load's result, the AWS calls the upstream counted, and the
    CPU seconds the server's workers used over the measured run."""

    spec: RowSpec
    result: LoadResult
    calls: Mapping[str, int]
    cpu_seconds: float

    def per_thousand(self, count: int) -> float:
        # per request the handler received: the ones in flight at the end made calls too
        return 1000 * count / self.result.sent if self.result.sent else 0.0

    @property
    def get_id_per_1k(self) -> float:
        return self.per_thousand(self.calls.get("GetId", 0))

    @property
    def aws_per_1k(self) -> float:
        return self.per_thousand(sum(self.calls.values()))

    @property
    def cpu_ms_per_request(self) -> float:
        # the requests in flight at the end were served within the CPU reading too
        return 1000 * self.cpu_seconds / self.result.sent if self.result.sent else 0.0

    def progress_line(self) -> str:
        r = self.result
        return (
            f"  {self.spec.id:40} {r.requests_per_second:6.0f} req/s  p50 {r.p50_ms:6.1f} ms  "
            f"p99 {r.p99_ms:6.1f} ms  CPU {self.cpu_ms_per_request:5.2f} ms/req  "
            f"errors {r.errors}  GetId/1k {self.get_id_per_1k:4.0f}  "
            f"AWS/1k {self.aws_per_1k:5.0f}"
        )


@dataclass(frozen=True)
class Setting:
    """How the run was made, for the lines above the table."""

    workers: int
    worker_class: str
    connections: int
    duration: float
    warmup: float
    users: int
    load_before: float
    load_after: float
    command: str = ""
    profiled_row: str = ""
    profiles: tuple[str, ...] = ()
    profiler: str = ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(rows: Sequence[Row], setting: Setting) -> str:
    """The report as markdown."""
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}; "
        f"1-minute load average {setting.load_before:.1f} before the run, "
        f"{setting.load_after:.1f} after.",
        f"Servers: gunicorn, {setting.workers} `{setting.worker_class}` workers each "
        "(two `chime-broker serve`: as configured by default, and with "
        "`service.cache_credentials: false`; the naive baseline with the same settings); "
        "the brokers' store is SQLite.",
        f"Load: `bench/load.py`, closed loop, {setting.connections} keep-alive connections, "
        f"{setting.duration:g} s per row after a {setting.warmup:g} s warm-up; "
        f"{setting.users} users, each of whom exchanged once before the row. "
        "AWS calls (GetId, GetCredentialsForIdentity, GetOpenIdTokenForDeveloperIdentity, "
        "AssumeRole) are counted by the upstream; CPU is the server workers' utime + stime "
        "from `/proc`; both per request sent.",
    ]
    if setting.command:
        lines.append(f"Options: `{setting.command}`.")
    if setting.profiles:
        shown = ", ".join(f"`{p}`" for p in setting.profiles)
        lines.append(
            f"Profile of `{setting.profiled_row}` ({setting.profiler}), in a pass of its own "
            f"after the row: {shown}."
        )
    lines += [
        "",
        "| upstream | endpoint | exchange | handler | req/s | p50 ms | p99 ms | CPU ms/req "
        "| errors | GetId per 1k | AWS calls per 1k | req/s vs naive |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    naive = {
        (r.spec.upstream, r.spec.endpoint, r.spec.exchange): r.result.requests_per_second
        for r in rows
        if r.spec.handler == "naive"
    }
    for r in rows:
        spec = r.spec
        versus = ""
        baseline = naive.get((spec.upstream, spec.endpoint, spec.exchange))
        if spec.handler != "naive" and baseline:
            versus = f"{r.result.requests_per_second / baseline:.1f}x"
        lines.append(
            f"| {UPSTREAM_NAMES.get(spec.upstream, spec.upstream)} "
            f"| `{ENDPOINTS.get(spec.endpoint, spec.endpoint)}` | `{spec.exchange}` "
            f"| {HANDLER_NAMES.get(spec.handler, spec.handler)} "
            f"| {r.result.requests_per_second:,.0f} | {r.result.p50_ms:.1f} "
            f"| {r.result.p99_ms:.1f} | {r.cpu_ms_per_request:.2f} | {r.result.errors} "
            f"| {r.get_id_per_1k:,.0f} | {r.aws_per_1k:,.0f} | {versus} |"
        )
    return "\n".join(lines) + "\n"
