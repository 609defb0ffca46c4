"""Access tokens verified at the provider's token-inspection endpoint (Facebook, Login
with Amazon): the JSON client and the shape every access-token kind shares.

An access token proves only that *some* app was given access to the user. The
inspection result must name this broker's app (``app_id`` / ``aud``) and say the token
is valid; a token a user gave to another app never signs them in here. Access tokens
and app secrets never appear in logs or error messages: requests errors, whose text
holds the URL with its query string, are replaced rather than chained.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from identity.errors import InvalidToken, UpstreamError
from identity.http import no_answer, read_capped, upstream_session
from identity.models import Principal

MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_ACCESS_TOKEN_CHARS: Final = 4096


class InspectionClient:
    """JSON GETs to a provider's token-inspection and profile APIs.

    One ``requests.Session`` (connection pool) per provider, explicit timeouts, no
    retries, no redirects. Failures map to broker errors: unreachable →
    ``UpstreamUnavailable``, timeout → ``UpstreamTimeout``, 400/401 → ``InvalidToken``
    (the token was refused), 5xx, other statuses, a body over 1 MiB or not a JSON object
    → ``UpstreamError``. Neither the query string nor the headers are ever logged.
    """

    def __init__(
        self,
        *,
        provider: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._provider = provider
        self._timeouts = (connect_timeout, read_timeout)
        self._max_response_bytes = max_response_bytes
        self._session = upstream_session(pool_maxsize=64, operation="inspection")

    def get_json(
        self,
        url: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """``GET url`` and return the JSON object it answers with (HTTP 200 only)."""
        where = without_query(url)
        request_headers = {"Accept": "application/json", **(headers or {})}
        # Errors raised inside this block are replaced (``from None``): their text and
        # their causes hold the full URL, query string included.
        try:
            with self._session.get(
                url,
                params=params,
                headers=request_headers,
                timeout=self._timeouts,
                stream=True,
                allow_redirects=False,
            ) as response:
                status = response.status_code
                body = read_capped(response, self._max_response_bytes)
        except requests.RequestException as e:
            raise no_answer(
                e, upstream=f"{self._provider}: {what}", where=f"{what} {where}"
            ) from None
        if status in (400, 401):
            raise InvalidToken(
                "token refused by the identity provider",
                log_detail=f"{what} {where} answered HTTP {status}: {error_summary(body)}",
            )
        if status != 200:
            raise UpstreamError(
                f"{self._provider}: {what} failed",
                log_detail=f"{what} {where} answered HTTP {status}: {error_summary(body)}",
            )
        if body is None:
            raise UpstreamError(
                f"{self._provider}: {what} answer too large",
                log_detail=f"{what} {where}: body over {self._max_response_bytes} bytes",
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise UpstreamError(
                f"{self._provider}: {what} answer is not JSON",
                log_detail=f"{what} {where}: body is not JSON",
            ) from None
        if not isinstance(document, dict):
            raise UpstreamError(
                f"{self._provider}: {what} answer is not a JSON object",
                log_detail=f"{what} {where}: body is not a JSON object",
            )
        return document


def without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def error_summary(body: bytes | None) -> str:
    """The provider's error code and type from an error body, for the log only.

    Messages are left out: a provider may echo the token back in them.
    """
    try:
        document = json.loads(body or b"")
    except (ValueError, RecursionError):
        return "no JSON error body"
    if not isinstance(document, dict):
        return "no JSON error body"
    error = document.get("error")
    if isinstance(error, dict):  # Graph API: {"error": {"type", "code", "message"}}
        return f"type={short(error.get('type'))} code={short(error.get('code'))}"
    return f"error={short(error)}"  # OAuth 2.0: {"error": "invalid_token", ...}


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_access_token_shape(access_token: str) -> None:
    """Refuse anything that is not a plausible bearer token before sending it anywhere."""
    if (
        not isinstance(access_token, str)
        or not 0 < len(access_token) <= MAX_ACCESS_TOKEN_CHARS
        or not access_token.isascii()
        or not access_token.isprintable()
        or any(ch.isspace() for ch in access_token)
    ):
        raise InvalidToken("malformed token", log_detail="access token fails the shape check")


def string(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) and value else None


def profile_claims(subject: str, profile: Mapping[str, Any]) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": subject}
    for name in ("name", "email"):
        value = string(profile, name)
        if value is not None:
            claims[name] = value
    return claims


class AccessTokenProvider:
    """Shared shape of the access-token kinds: they take access tokens only."""

    accepts_id_token = False
    accepts_access_token = True

    def __init__(self, *, name: str, kind: str) -> None:
        self._name = name
        self._kind = kind

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    def verify_id_token(self, id_token: str, *, nonce: str | None) -> Principal:
        """Refused: this provider's mobile clients present access tokens."""
        raise InvalidToken(f"provider {self._name!r} takes an access_token, not an id_token")
