"""The benchmark's fake upstreams in one gevent process on a loopback port.

    python -m bench.upstreams --delay 0.025 --jwks-file keys.json

* ``POST /``: the fake Cognito Identity service (`bench.fake_cognito.FakeCognito`), or
  for a form-encoded body the fake STS (`bench.fake_sts.FakeSts`).
* ``GET /jwks``: the identity provider's key set, as a remote IdP serves it: a static
  document, so that the naive baseline's per-request fetch costs this machine one HTTP
  round trip and not the CPU of a Python IdP serving it.
* ``GET /_bench/counts``, ``POST /_bench/reset``: both fakes' call counters.

The first line on stdout is the port it bound; it serves until terminated.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from bench.fake_cognito import FakeCognito, StartResponse
from bench.fake_sts import FakeSts, is_query_request


class Upstreams:
    """WSGI dispatch between the fake Cognito, the fake STS, the static JWKS and the
    counters."""

    def __init__(self, cognito: FakeCognito, sts: FakeSts, jwks: bytes) -> None:
        self.cognito = cognito
        self.sts = sts
        self.jwks = jwks

    def _json(self, start_response: StartResponse, body: bytes) -> Iterable[bytes]:
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD")
        if path == "/":
            if is_query_request(environ):
                return self.sts(environ, start_response)
            return self.cognito(environ, start_response)
        if path == "/jwks" and method == "GET":
            return self._json(start_response, self.jwks)
        if path == "/_bench/counts" and method == "GET":
            counts = {**self.cognito.counts(), **self.sts.counts()}
            return self._json(start_response, json.dumps(counts).encode())
        if path == "/_bench/reset" and method == "POST":
            self.cognito.reset()
            self.sts.reset()
            return self._json(start_response, b"{}")
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstreams")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jwks-file", required=True)
    args = parser.parse_args(argv)

    from gevent import monkey

    monkey.patch_all()
    from gevent.pywsgi import WSGIServer

    with open(args.jwks_file, "rb") as f:
        jwks = f.read()
    app = Upstreams(FakeCognito(delay=args.delay), FakeSts(delay=args.delay), jwks)
    server = WSGIServer((args.host, args.port), app, log=None, error_log=sys.stderr)
    server.init_socket()
    # pywsgi writes a response's headers and body in two sends: without TCP_NODELAY
    # (inherited by accepted sockets) the second waits out the client's delayed ACK,
    # adding 40 ms to every call on a reused connection.
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(server.server_port, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
