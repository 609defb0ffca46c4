"""The coalescing socket of the gevent worker, on a real socket pair: a response's header
block goes out with its body in one write, nothing is held past a read or the request's
end, and a large write is never buffered."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.gevent_worker import HOLD_LIMIT, CoalescingSocket

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
