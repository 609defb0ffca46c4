"""The gevent worker's parts. The coalescing socket, on a real socket pair: a response's
header block goes out with its body in one write, nothing is held past a read or the
request's end, and a large write is never buffered. The settings read once, and the Date
header formatted once a second, against gunicorn's own."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.util import http_date as gunicorn_http_date
from hypothesis import given
from hypothesis import strategies as st

from service.gevent_worker import HOLD_LIMIT, CoalescingSocket, WorkerSettings, http_date

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


@pytest.fixture
def pair() -> Iterator[tuple[CoalescingSocket, socket.socket]]:
    server, client = socket.socketpair()
    client.setblocking(False)
    try:
        yield CoalescingSocket(server), client
    finally:
        server.close()
        client.close()


def _pending(peer: socket.socket) -> bytes:
    """Everything the peer can read now, without waiting."""
    got = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


class _CountingSocket:
    """A real socket whose ``sendall`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes, flags: int = 0) -> None:
        self.writes.append(bytes(data))
        self.sock.sendall(data, flags)


def test_the_header_block_waits_for_the_body_then_both_go_in_one_write() -> None:
    server, peer = socket.socketpair()
    peer.setblocking(False)
    try:
        counted = _CountingSocket(server)
        out = CoalescingSocket(counted)  # type: ignore[arg-type]
        out.sendall(HEAD)
        assert _pending(peer) == b""
        out.sendall(b"{}")
        assert _pending(peer) == b""
        out.flush()
        assert counted.writes == [HEAD + b"{}"]
        assert _pending(peer) == HEAD + b"{}"
        out.flush()
        assert counted.writes == [HEAD + b"{}"]
    finally:
        server.close()
        peer.close()


def test_reading_the_next_request_first_sends_what_is_held(
    pair: tuple[CoalescingSocket, socket.socket],
) -> None:
    out, peer = pair
    out.sendall(HEAD + b"{}")
    peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert out.recv(1024) == b"GET / HTTP/1.1\r\n\r\n"
    assert _pending(peer) == HEAD + b"{}"


def test_a_large_write_goes_out_at_once_after_what_was_held(
    pair: tuple[CoalescingSocket, socket.socket],
) -> None:
    out, peer = pair
    body = b"x" * HOLD_LIMIT
    out.sendall(HEAD)
    peer_bytes = b""
    # the socket pair's buffer is smaller than the body: read while the write goes on
    writer = threading.Thread(target=out.sendall, args=(body,))
    writer.start()
    peer.settimeout(10)
    while len(peer_bytes) < len(HEAD) + len(body):
        peer_bytes += peer.recv(1 << 20)
    writer.join(timeout=10)
    assert peer_bytes == HEAD + body


def test_send_sendfile_and_shutdown_send_what_is_held_first(
    pair: tuple[CoalescingSocket, socket.socket], tmp_path: Path
) -> None:
    out, peer = pair
    out.sendall(b"held ")
    assert out.send(b"now") == 3
    assert _pending(peer) == b"held now"
    out.sendall(b"file: ")
    body = tmp_path / "body"
    body.write_bytes(b"contents")
    with body.open("rb") as f:
        assert out.sendfile(f) == len(b"contents")
    assert _pending(peer) == b"file: contents"
    out.sendall(b"before shutdown")
    out.shutdown(socket.SHUT_WR)
    assert _pending(peer) == b"before shutdown"


def test_close_sends_what_is_held_first(pair: tuple[CoalescingSocket, socket.socket]) -> None:
    out, peer = pair
    out.sendall(b"last")
    out.close()
    assert _pending(peer) == b"last"


def test_everything_else_is_the_wrapped_sockets(
    pair: tuple[CoalescingSocket, socket.socket],
) -> None:
    out, _ = pair
    assert out.fileno() == out._sock.fileno()
    assert out.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM


def test_the_worker_settings_are_the_configs_read_once() -> None:
    cfg = Config()
    cfg.set("keepalive", 7)
    reads: list[str] = []

    class CountingConfig:
        def __getattr__(self, name: str) -> Any:
            reads.append(name)
            return getattr(cfg, name)

    settings = WorkerSettings(CountingConfig())
    for name in cfg.settings:
        assert getattr(settings, name) == getattr(cfg, name), name
    assert settings.keepalive == 7
    assert settings.is_ssl is cfg.is_ssl
    assert settings.forwarded_allow_networks() == cfg.forwarded_allow_networks()
    looked_up = len(reads)
    for name in cfg.settings:
        getattr(settings, name)
    settings.forwarded_allow_networks()
    assert len(reads) == looked_up
    with pytest.raises(AttributeError):
        _ = settings.no_such_setting


@given(st.integers(min_value=0, max_value=4_102_444_800), st.floats(0, 0.999))
def test_the_date_header_is_gunicorns_to_the_second(second: int, fraction: float) -> None:
    assert http_date(second + fraction) == gunicorn_http_date(second)
    assert http_date(second) == email.utils.formatdate(second, usegmt=True)


def test_the_date_header_follows_the_clock() -> None:
    before = email.utils.parsedate_to_datetime(http_date()).timestamp()
    assert abs(before - time.time()) <= 1
    assert http_date(86_400) == "Fri, 02 Jan 1970 00:00:00 GMT"
    assert http_date(86_401) == "Fri, 02 Jan 1970 00:00:01 GMT"
