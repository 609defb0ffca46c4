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


@dataclass(frozen=True)
class Row:
    """One measured cell: a handler on an endpoint against an upstream."""

    upstream: str
    endpoint: str
    exchange: str
    handler: str
    result: LoadResult
    calls: Mapping[str, int]

    def per_thousand(self, count: int) -> float:
        # per request the handler received: the ones in flight at the end made calls too
        return 1000 * count / self.result.sent if self.result.sent else 0.0

    @property
    def get_id_per_1k(self) -> float:
        return self.per_thousand(self.calls.get("GetId", 0))

    @property
    def cognito_per_1k(self) -> float:
        return self.per_thousand(sum(self.calls.values()))

    def progress_line(self) -> str:
        r = self.result
        return (
            f"  {self.upstream:8} {self.endpoint:21} {self.exchange:17} {self.handler:6} "
            f"{r.requests_per_second:7.0f} req/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  "
            f"errors {r.errors}  GetId/1k {self.get_id_per_1k:5.0f}  "
            f"Cognito/1k {self.cognito_per_1k:5.0f}"
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
        "(`chime-broker serve`, and the naive baseline with the same settings); "
        "the broker's store is SQLite.",
        f"Load: `bench/load.py`, closed loop, {setting.connections} keep-alive connections, "
        f"{setting.duration:g} s per row after a {setting.warmup:g} s warm-up; "
        f"{setting.users} users, each seen once before (returning users). "
        "Cognito calls are counted by the upstream, per request sent.",
        "",
        "| upstream | endpoint | exchange | handler | req/s | p50 ms | p99 ms | errors "
        "| GetId per 1k | Cognito calls per 1k | req/s vs naive |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    naive = {
        (r.upstream, r.endpoint, r.exchange): r.result.requests_per_second
        for r in rows
        if r.handler == "naive"
    }
    for r in rows:
        versus = ""
        baseline = naive.get((r.upstream, r.endpoint, r.exchange))
        if r.handler == "broker" and baseline:
            versus = f"{r.result.requests_per_second / baseline:.1f}x"
        lines.append(
            f"| {UPSTREAM_NAMES.get(r.upstream, r.upstream)} | `{r.endpoint}` | `{r.exchange}` "
            f"| {r.handler} | {r.result.requests_per_second:,.0f} | {r.result.p50_ms:.1f} "
            f"| {r.result.p99_ms:.1f} | {r.result.errors} | {r.get_id_per_1k:,.0f} "
            f"| {r.cognito_per_1k:,.0f} | {versus} |"
        )
    return "\n".join(lines) + "\n"
