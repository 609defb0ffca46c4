"""Fakes for the parts of the world a test must control: the clock, and the
token-inspection APIs the broker calls for access-token providers.

``FakeClock`` stands in wherever the code takes a ``clock`` (wall or monotonic): it reads
the wall clock once and then moves only when the test calls ``advance``; the ``clock``
fixture gives each test one.

``FacebookApi`` answers ``GET /debug_token`` and ``GET /me`` like the Graph API;
``AmazonApi`` answers ``GET /auth/o2/tokeninfo`` and ``GET /user/profile`` like Login
with Amazon. Each is a Werkzeug app served on a free loopback port in a thread, records
every request it receives in ``.requests``, and can be told to misbehave (``.fault``).
The pytest fixtures ``facebook_api`` and ``amazon_api`` start one per test and stop it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import pytest
from werkzeug.wrappers import Request, Response

from tests.fixtures.loopback import LoopbackServer

FACEBOOK_APP_ID = "1234567890"
FACEBOOK_APP_SECRET = "facebook-app-secret-for-tests"
AMAZON_CLIENT_ID = "amzn1.application-oa2-client.0123456789abcdef"
AMAZON_APP_ID = "amzn1.application.0123456789abcdef"


class FakeClock:
    """Seconds since the epoch, standing still until ``advance``. It starts at the wall
    clock, so tokens that real parts (the local IdP, PyJWT) issue now are current."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand; pass it where the code under test takes ``clock``."""
    return FakeClock()


@dataclass(frozen=True)
class RecordedRequest:
    """One request a fake received."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass
class Fault:
    """Make every answer misbehave: wait ``delay`` seconds, then (when ``status`` is set)
    answer ``status`` with ``body`` instead of the normal response."""

    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0


class FakeApi:
    """A Werkzeug app on ``127.0.0.1:<free port>``; use as a context manager or call
    ``.stop()``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.fault: Fault | None = None
        self._routes: dict[str, Callable[[Request], Response]] = {}
        self._server = LoopbackServer(self._wsgi, name=type(self).__name__)
        self.url = f"http://127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests for ``path``."""
        return [r for r in self.requests if r.path == path]

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.args),
                headers=dict(request.headers),
            )
        )
        response = self._respond(request)
        return response(environ, start_response)

    def _respond(self, request: Request) -> Response:
        fault = self.fault
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                return Response(fault.body, status=fault.status, content_type=fault.content_type)
        route = self._routes.get(request.path)
        if route is None:
            return _json({"error": "not found"}, 404)
        if request.method != "GET":
            return _json({"error": "method not allowed"}, 405)
        return route(request)


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, content_type="application/json")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value if scheme.lower() == "bearer" and value else None


@dataclass(frozen=True)
class FacebookToken:
    """What the Graph API knows about one user access token. ``expires_at`` 0 = never."""

    app_id: str
    user_id: str
    is_valid: bool = True
    expires_at: int = 0
    profile: Mapping[str, Any] = field(default_factory=dict)


class FacebookApi(FakeApi):
    """``GET /debug_token?input_token=…&access_token=<app_id>|<app_secret>`` and
    ``GET /me?fields=…`` (token as ``Authorization: Bearer``, with ``appsecret_proof``
    checked when given). ``apps`` maps app id → app secret."""

    def __init__(self, apps: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.apps = dict(apps or {FACEBOOK_APP_ID: FACEBOOK_APP_SECRET})
        self.tokens: dict[str, FacebookToken] = {}
        self._routes = {"/debug_token": self._debug_token, "/me": self._me}

    @property
    def debug_token_url(self) -> str:
        return f"{self.url}/debug_token"

    @property
    def userinfo_url(self) -> str:
        return f"{self.url}/me?fields=id,name,email"

    def add_token(
        self,
        token: str,
        *,
        user_id: str,
        app_id: str = FACEBOOK_APP_ID,
        is_valid: bool = True,
        expires_at: int | None = None,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """Register ``token``; it expires in an hour unless ``expires_at`` says otherwise."""
        self.tokens[token] = FacebookToken(
            app_id=app_id,
            user_id=user_id,
            is_valid=is_valid,
            expires_at=int(time.time()) + 3600 if expires_at is None else expires_at,
            profile={"id": user_id, **(profile or {})},
        )

    def _debug_token(self, request: Request) -> Response:
        app_token = request.args.get("access_token", "")
        app_id, _, app_secret = app_token.partition("|")
        known = self.apps.get(app_id)
        if known is None or not hmac.compare_digest(known, app_secret):
            return _graph_error("Invalid OAuth access token signature.", 190, 400)
        found = self.tokens.get(request.args.get("input_token", ""))
        if found is None:
            return _graph_error("Invalid OAuth access token - Cannot parse access token", 190, 400)
        data: dict[str, Any] = {
            "app_id": found.app_id,
            "type": "USER",
            "application": f"app {found.app_id}",
            "expires_at": found.expires_at,
            "is_valid": found.is_valid and not _expired(found.expires_at),
            "issued_at": int(time.time()) - 60,
            "scopes": ["public_profile", "email"],
            "user_id": found.user_id,
        }
        if not data["is_valid"]:
            data["error"] = {"code": 190, "message": "Error validating access token"}
        return _json({"data": data})

    def _me(self, request: Request) -> Response:
        token = _bearer(request) or request.args.get("access_token", "")
        found = self.tokens.get(token)
        if found is None or not found.is_valid or _expired(found.expires_at):
            return _graph_error("Error validating access token", 190, 401)
        proof = request.args.get("appsecret_proof")
        if proof is not None:
            secret = self.apps.get(found.app_id, "")
            expected = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(proof, expected):
                return _graph_error("Invalid appsecret_proof provided in the API argument", 100)
        fields = request.args.get("fields", "id,name")
        return _json({k: v for k, v in found.profile.items() if k in fields.split(",")})


def _expired(expires_at: int) -> bool:
    return expires_at != 0 and expires_at <= time.time()


def _graph_error(message: str, code: int, status: int = 400) -> Response:
    return _json({"error": {"message": message, "type": "OAuthException", "code": code}}, status)


@dataclass(frozen=True)
class AmazonToken:
    """What Login with Amazon knows about one access token."""

    aud: str
    user_id: str
    app_id: str = AMAZON_APP_ID
    expires_in: int = 3600
    profile: Mapping[str, Any] = field(default_factory=dict)


class AmazonApi(FakeApi):
    """``GET /auth/o2/tokeninfo?access_token=…`` and ``GET /user/profile``
    (``Authorization: Bearer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, AmazonToken] = {}
        self._routes = {"/auth/o2/tokeninfo": self._tokeninfo, "/user/profile": self._profile}

    @property
    def tokeninfo_url(self) -> str:
        return f"{self.url}/auth/o2/tokeninfo"

    @property
    def userinfo_url(self) -> str:
        return f"{self.url}/user/profile"

    def add_token(
        self,
        token: str,
        *,
        user_id: str,
        aud: str = AMAZON_CLIENT_ID,
        app_id: str = AMAZON_APP_ID,
        expires_in: int = 3600,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """Register ``token``; ``expires_in`` ≤ 0 makes tokeninfo refuse it as expired."""
        self.tokens[token] = AmazonToken(
            aud=aud,
            user_id=user_id,
            app_id=app_id,
            expires_in=expires_in,
            profile={"user_id": user_id, **(profile or {})},
        )

    def _tokeninfo(self, request: Request) -> Response:
        found = self.tokens.get(request.args.get("access_token", ""))
        if found is None or found.expires_in <= 0:
            return _json(
                {
                    "error": "invalid_token",
                    "error_description": "The request has an invalid parameter : access_token",
                },
                400,
            )
        answer = _json(
            {
                "iss": "https://www.amazon.com",
                "user_id": found.user_id,
                "aud": found.aud,
                "app_id": found.app_id,
                "exp": found.expires_in,
                "iat": int(time.time()) - 60,
            }
        )
        # The real endpoint sets cookies too; a client must not send them back.
        answer.set_cookie("session-id", f"{found.user_id}-session")
        return answer

    def _profile(self, request: Request) -> Response:
        found = self.tokens.get(_bearer(request) or "")
        if found is None or found.expires_in <= 0:
            return _json(
                {"error": "invalid_token", "error_description": "The access token is invalid"},
                401,
            )
        return _json(dict(found.profile))


@pytest.fixture
def facebook_api() -> Iterator[FacebookApi]:
    """A fake Graph API that knows the app ``FACEBOOK_APP_ID`` / ``FACEBOOK_APP_SECRET``."""
    with FacebookApi() as api:
        yield api


@pytest.fixture
def amazon_api() -> Iterator[AmazonApi]:
    """A fake Login with Amazon API; register tokens with ``add_token``."""
    with AmazonApi() as api:
        yield api
