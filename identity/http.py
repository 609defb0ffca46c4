"""Outbound HTTP to identity providers (JWKS, discovery, token inspection, SAML metadata):
sessions that never retry on their own and never keep cookies, and bodies read with a cap."""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

from identity.errors import BrokerError, UpstreamTimeout, UpstreamUnavailable


def upstream_session(*, pool_maxsize: int) -> requests.Session:
    """A session for one upstream: no automatic retries (callers back off or answer 503
    themselves) and no cookie jar (one user's cookie must never ride along with another's)."""
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def read_capped(response: requests.Response, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def no_answer(error: requests.RequestException, *, upstream: str, where: str) -> BrokerError:
    """The broker's error for a call to an identity provider that got no answer: a timeout is
    504 ``upstream_timeout``, anything else 503 ``upstream_unavailable``. ``upstream`` names
    it for the client; ``where`` (operation and URL) goes to the log only."""
    if isinstance(error, requests.Timeout):
        return UpstreamTimeout(
            f"{upstream} did not answer in time", log_detail=f"{where} timed out"
        )
    return UpstreamUnavailable(
        f"{upstream} is unreachable", log_detail=f"{where} unreachable: {type(error).__name__}"
    )
