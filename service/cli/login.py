"""``chime-broker login``: a native browser login at a broker (DESIGN §3, RFC 8252).

A one-shot HTTP listener on ``127.0.0.1:<random port>`` is the ``return_to``; the broker
sends the browser back to it with ``?code=`` (or ``?error=``) and the code is exchanged,
with this run's PKCE verifier, at ``POST /v1/token``. The broker session is stored in a
file only the user can read, under ``$XDG_CONFIG_HOME/chime-broker/`` (else
``~/.config/chime-broker/``), one file per broker URL and provider.

``requests`` and ``http.server`` (both import ``ssl``) are imported inside the functions,
so that importing the command stays light (see ``service.cli``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, quote, urlencode, urlsplit

if TYPE_CHECKING:
    import requests

LOGIN_EXAMPLES = """\
examples:
  chime-broker login --broker https://broker.example.chat --provider okta
  # on a machine without a browser: open the printed URL elsewhere on this machine
  chime-broker login --broker https://broker.example.chat --provider okta --no-browser"""

HTTP_TIMEOUT = 30.0

_DONE_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>chime-broker</title>
</head><body><p>%s You can close this window.</p></body></html>"""


class CommandError(Exception):
    """A failure reported as one line on stderr, exit status 1."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chime-broker"


def normal_broker(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise CommandError(f"--broker must be the broker's http(s) URL, not {url!r}")
    return url.rstrip("/")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def session_path(broker: str, provider: str) -> Path:
    return config_dir() / f"session-{_digest(broker, provider)}.json"


def write_private(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path`` (mode 0600, directory 0700), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def problem_line(response: requests.Response) -> str:
    """One line describing an error answer of the broker."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") or body.get("title") or ""
        detail = body.get("detail") or ""
        return f"the broker answered {response.status_code} {code}: {detail}".rstrip(": ")
    return f"the broker answered {response.status_code}"


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier`` (RFC 7636, 4.2)."""
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    return str(create_s256_code_challenge(verifier))


@dataclass
class _Answer:
    code: str | None = None
    error: str | None = None


class _Listener(Protocol):
    answer: _Answer
    timeout: float | None
    server_address: Any

    def handle_request(self) -> None: ...

    def server_close(self) -> None: ...


def _listen() -> _Listener:
    """A one-shot HTTP listener on ``127.0.0.1`` (a random port) for the way back."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Listener(HTTPServer):
        answer = _Answer()

    class Handler(BaseHTTPRequestHandler):
        server: Listener

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path != "/" or not ({"code", "error"} & params.keys()):
                self.send_error(404)
                return
            if "error" in params:
                self.server.answer = _Answer(error=params["error"])
                message = b"Sign-in failed."
            else:
                self.server.answer = _Answer(code=params["code"])
                message = b"Signed in to the Chime Identity Broker."
            body = _DONE_PAGE % message
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Listener(("127.0.0.1", 0), Handler)


def wait_for_answer(listener: _Listener, timeout: float) -> _Answer:
    deadline = time.monotonic() + timeout
    while listener.answer.code is None and listener.answer.error is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandError(f"no sign-in arrived within {timeout:g} s")
        listener.timeout = min(remaining, 1.0)
        listener.handle_request()
    return listener.answer


def login(broker: str, provider: str, *, open_browser: bool, timeout: float) -> Path:
    """Run the whole login; the path of the stored session."""
    import webbrowser

    import requests

    verifier = secrets.token_urlsafe(48)
    listener = _listen()
    try:
        return_to = f"http://127.0.0.1:{listener.server_address[1]}/"
        query = urlencode(
            {
                "return_to": return_to,
                "code_challenge": s256(verifier),
                "code_challenge_method": "S256",
            }
        )
        url = f"{broker}/v1/login/{quote(provider, safe='')}?{query}"
        if open_browser and webbrowser.open(url):
            print(
                f"Opened your browser to sign in. If it did not open, visit:\n{url}",
                file=sys.stderr,
            )
        else:
            print(f"Visit this URL on this machine to sign in:\n{url}", file=sys.stderr, flush=True)
        answer = wait_for_answer(listener, timeout)
    finally:
        listener.server_close()
    if answer.error is not None:
        shown = "".join(ch for ch in answer.error if ch.isprintable())[:100]
        raise CommandError(f"the sign-in failed: {shown}")
    response = requests.post(
        f"{broker}/v1/token",
        json={"provider": provider, "code": answer.code, "code_verifier": verifier},
        timeout=HTTP_TIMEOUT,
    )
    if response.status_code != 200:
        raise CommandError(problem_line(response))
    session = response.json().get("broker_session") or {}
    if not session.get("token"):
        raise CommandError("the broker's answer has no broker_session")
    path = session_path(broker, provider)
    write_private(
        path,
        {
            "broker": broker,
            "provider": provider,
            "token": session["token"],
            "expires_at": session.get("expires_at"),
        },
    )
    return path


def run_login(args: argparse.Namespace) -> int:
    import requests

    try:
        broker = normal_broker(args.broker)
        path = login(broker, args.provider, open_browser=not args.no_browser, timeout=args.timeout)
    except CommandError as error:
        print(f"chime-broker login: {error}", file=sys.stderr)
        return 1
    except requests.RequestException as error:
        print(
            f"chime-broker login: could not reach {args.broker}: {type(error).__name__}",
            file=sys.stderr,
        )
        return 1
    except OSError as error:
        print(f"chime-broker login: {error}", file=sys.stderr)
        return 1
    print(f"Signed in; the session is stored in {path}", file=sys.stderr)
    return 0


def add_login_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "login",
        help="sign in at a broker in the system browser and store the broker session",
        description="Sign in at a broker through the system browser (RFC 8252 loopback "
        "redirect, PKCE S256) and store the broker session for credential-process.",
        epilog=LOGIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", required=True, help="the broker's base URL")
    parser.add_argument("--provider", required=True, help="the provider to sign in with")
    parser.add_argument(
        "--no-browser", action="store_true", help="print the sign-in URL instead of opening it"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the sign-in to finish (default: 300)",
    )
    parser.set_defaults(func=run_login)
