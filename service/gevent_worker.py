"""gunicorn's gevent worker, with each response sent in one write where it fits.

gunicorn writes a response's status line and headers with one ``sendall`` and its body with
another: two system calls, and on a TCP connection two segments, each waking the client.
:class:`CoalescingSocket` holds the header block back and sends it with the body, or at
the end of the request; :class:`BrokerGeventWorker` wraps each request's socket in one and
then yields to the other connections.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["HOLD_LIMIT", "BrokerGeventWorker", "CoalescingSocket"]

# Writes are held back while they total less than this; a larger write, and whatever is
# held, goes out at once (a long or streamed body is not buffered).
HOLD_LIMIT = 64 * 1024


class CoalescingSocket:
    """A connected socket whose ``sendall`` writes are held until the held bytes would
    reach :data:`HOLD_LIMIT`, another kind of write or read is made, or :meth:`flush`.

    Everything else is the wrapped socket's own.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: list[bytes] = []
        self._size = 0

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if flags or self._size + len(data) >= HOLD_LIMIT:
            self._sock.sendall(self._take() + bytes(data), flags)
            return
        self._held.append(bytes(data))
        self._size += len(data)

    def _take(self) -> bytes:
        held = b"".join(self._held)
        self._held.clear()
        self._size = 0
        return held

    def flush(self) -> None:
        """Send whatever is held."""
        if self._held:
            self._sock.sendall(self._take())

    def send(self, data: bytes, flags: int = 0) -> int:
        self.flush()
        return self._sock.send(data, flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        self.flush()
        return self._sock.sendfile(file, offset, count)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.flush()
        return self._sock.recv(bufsize, flags)

    def shutdown(self, how: int) -> None:
        self.flush()
        self._sock.shutdown(how)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BrokerGeventWorker(GeventWorker):  # type: ignore[misc]
    """The gevent worker: a response in one write where it fits, then a yield to the
    other connections.

    A request that does no network I/O (a credential-cache hit) never yields to the gevent
    hub, and gunicorn then reads the next request on the same keep-alive connection: one
    busy connection would starve the others. The worker yields once per request, after the
    response has gone out (yielding only every few requests saves a little CPU, but lets
    p99 latency grow several times).
    """

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        out = CoalescingSocket(sock)
        try:
            return super().handle_request(listener_name, req, out, addr)
        finally:
            try:
                out.flush()
            finally:
                gevent.sleep(0)
