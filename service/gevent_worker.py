"""gunicorn's gevent worker, with each response sent in one write where it fits, and
gunicorn's per-request lookups made once.

gunicorn writes a response's status line and headers with one ``sendall`` and its body with
another: two system calls, and on a TCP connection two segments, each waking the client.
:class:`CoalescingSocket` holds the header block back and sends it with the body, or at
the end of the request; :class:`BrokerGeventWorker` wraps each request's socket in one and
then yields to the other connections.

gunicorn also reads its settings through ``Config.__getattr__`` (a lookup and a
validator's ``get``, about half a microsecond each) dozens of times per request, and
formats the ``Date`` header with :func:`email.utils.formatdate` for every response. The
worker reads each setting once (:class:`WorkerSettings`) and formats each second's date
once (:func:`http_date`).
"""

from __future__ import annotations

import email.utils
import socket
import time
from functools import lru_cache
from typing import Any

import gevent
import gunicorn.util
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["HOLD_LIMIT", "BrokerGeventWorker", "CoalescingSocket", "WorkerSettings", "http_date"]

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


class WorkerSettings:
    """A worker's gunicorn config, each setting (or property, or method) looked up on the
    config the first time it is asked for and kept.

    A worker's settings do not change while it lives: gunicorn applies a reload by starting
    new workers.
    """

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        setattr(self, name, value)
        return value


@lru_cache(maxsize=2)
def _http_date_of(second: int) -> str:
    return email.utils.formatdate(second, localtime=False, usegmt=True)


def http_date(timestamp: float | None = None) -> str:
    """An HTTP ``Date`` value, as gunicorn's own ``http_date`` gives it (whole seconds,
    GMT), formatted once per second."""
    return _http_date_of(int(time.time() if timestamp is None else timestamp))


class BrokerGeventWorker(GeventWorker):  # type: ignore[misc]
    """The gevent worker: a response in one write where it fits, then a yield to the
    other connections; settings read once and the Date header formatted once a second.

    A request that does no network I/O (a credential-cache hit) never yields to the gevent
    hub, and gunicorn then reads the next request on the same keep-alive connection: one
    busy connection would starve the others. The worker yields once per request, after the
    response has gone out (yielding only every few requests saves a little CPU, but lets
    p99 latency grow several times).
    """

    def init_process(self) -> None:
        # gunicorn's classes are untyped: mypy cannot tell what ``cfg`` is
        self.cfg = WorkerSettings(self.cfg)  # type: ignore[has-type]
        # gunicorn's responses call gunicorn.util.http_date; this process is the worker's own
        gunicorn.util.http_date = http_date
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        out = CoalescingSocket(sock)
        try:
            return super().handle_request(listener_name, req, out, addr)
        finally:
            try:
                out.flush()
            finally:
                gevent.sleep(0)
