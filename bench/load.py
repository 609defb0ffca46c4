"""A closed-loop HTTP/1.1 load generator: ``connections`` keep-alive connections, each
sending its next request as soon as the previous answer is complete, for a bounded time.

Every request's latency is measured as it happened (from the write to the last byte of
the answer) and kept, so the percentiles are exact. wrk was the first choice, but it
rewrites its latency histogram with a coordinated-omission correction (synthetic samples
at the mean request interval), which makes its percentiles disagree with the requests it
made whenever some connections wait much longer than others; here they agree (Little's
law holds: mean latency x throughput = connections). Requests are pre-encoded, the parser
reads only the status line and the framing headers, and asyncio's protocol interface
keeps the generator's own CPU use small next to the servers it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from urllib.parse import urlsplit

__all__ = ["LoadRequest", "LoadResult", "run_load"]

_HEADER_END = b"\r\n\r\n"


@dataclass(frozen=True)
class LoadRequest:
    """One request of the round-robin set."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    def encode(self, host: str) -> bytes:
        body = self.body.encode("utf-8")
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class LoadResult:
    """What one run measured; latencies in milliseconds, sorted.

    ``completed`` answers arrived within the run. ``sent`` also counts the requests still
    in flight when it ended, which the server goes on to handle (and which make upstream
    calls). ``errors`` are non-2xx answers plus requests lost to a closed connection or
    a timeout.
    """

    duration_s: float
    completed: int
    sent: int
    non_2xx: int
    socket_errors: int
    latencies_ms: tuple[float, ...]

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    def percentile(self, p: float) -> float:
        """The latency below which ``p`` percent of the answers arrived (nearest rank)."""
        if not self.latencies_ms:
            return 0.0
        rank = max(1, min(len(self.latencies_ms), round(p / 100 * len(self.latencies_ms) + 0.5)))
        return self.latencies_ms[rank - 1]

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)


class _Run:
    """State shared by the connections of one run."""

    def __init__(self, requests: Sequence[bytes], stop_at: float) -> None:
        self.requests = requests
        self.stop_at = stop_at
        self.next_index = count()
        self.latencies: list[float] = []
        self.sent = 0
        self.non_2xx = 0
        self.socket_errors = 0

    def next_request(self) -> bytes:
        return self.requests[next(self.next_index) % len(self.requests)]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request, its answer, the next request."""

    def __init__(self, run: _Run, closed: asyncio.Future[None]) -> None:
        self.run = run
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = 0.0
        self.waiting = False
        self.need: int | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.run.stop_at:
            self.transport.close()
            return
        self.run.sent += 1
        self.waiting = True
        self.need = None
        self.started = time.perf_counter()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.need = end + len(_HEADER_END) + length
        if len(self.buffer) < self.need:
            return
        elapsed = time.perf_counter() - self.started
        del self.buffer[: self.need]
        self.waiting = False
        if time.perf_counter() < self.run.stop_at:
            self.run.latencies.append(elapsed * 1000)
            if not 200 <= self.status < 300:
                self.run.non_2xx += 1
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting and time.perf_counter() < self.run.stop_at:
            self.run.socket_errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def _connection_loop(host: str, port: int, run: _Run, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < run.stop_at:
        closed: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(partial(_Connection, run, closed), host, port), timeout
            )
        except (TimeoutError, OSError):
            run.socket_errors += 1
            await asyncio.sleep(0.05)
            continue
        remaining = run.stop_at - time.perf_counter()
        try:
            # a connection ends when the run does, or when the server closes it (reconnect)
            await asyncio.wait_for(asyncio.shield(closed), max(0.0, remaining) + 0.001)
        except TimeoutError:
            transport.abort()
            return


async def _run(
    url: str, requests: Sequence[LoadRequest], connections: int, duration: float, timeout: float
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    encoded = [r.encode(f"{host}:{port}") for r in requests]
    started = time.perf_counter()
    run = _Run(encoded, started + duration)
    await asyncio.gather(*(_connection_loop(host, port, run, timeout) for _ in range(connections)))
    elapsed = min(time.perf_counter(), run.stop_at) - started
    return LoadResult(
        duration_s=elapsed,
        completed=len(run.latencies),
        sent=run.sent,
        non_2xx=run.non_2xx,
        socket_errors=run.socket_errors,
        latencies_ms=tuple(sorted(run.latencies)),
    )


def run_load(
    base_url: str,
    requests: Sequence[LoadRequest],
    *,
    connections: int,
    duration: float,
    timeout: float = 10.0,
) -> LoadResult:
    """Send ``requests`` round-robin to ``base_url`` over ``connections`` keep-alive
    connections for ``duration`` seconds."""
    if not requests:
        raise ValueError("at least one request is needed")
    return asyncio.run(_run(base_url, requests, connections, duration, timeout))
