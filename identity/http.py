"""Outbound HTTP to identity providers (JWKS, discovery, token inspection, SAML metadata):
sessions that never retry on their own and never keep cookies, and bodies read with a cap."""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter


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
