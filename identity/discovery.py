"""An OpenID Provider's discovery document (OpenID Connect Discovery 1.0, section 4), read
once per provider and shared by what needs it: the signing keys (``jwks_uri`` and the
advertised algorithms) and the browser login (authorization, token, userinfo and
end-session endpoints).

The document must name the configured issuer exactly (section 4.3), so a provider cannot
point the broker at another issuer's keys. It is fetched through the broker's upstream
HTTP session (no redirects, a size cap, the configured timeouts) rather than with
Authlib's ``load_server_metadata``, which belongs to its framework OAuth apps and reads
the document with neither a cap nor an issuer check.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from identity.errors import BrokerError, UpstreamTimeout, UpstreamUnavailable
from identity.http import get_capped, json_object, upstream_session

WELL_KNOWN_PATH: Final = "/.well-known/openid-configuration"
MAX_DISCOVERY_BYTES: Final = 256 * 1024
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def is_https_or_loopback(url: str) -> bool:
    """``https`` with a host, or plain ``http`` to a loopback address (tests, the demo)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS


def endpoint(document: Mapping[str, Any], name: str) -> str | None:
    """The document's ``name`` member when it is an https (or loopback) URL."""
    value = document.get(name)
    return value if isinstance(value, str) and is_https_or_loopback(value) else None


class OidcDiscovery:
    """One issuer's discovery document, fetched on first use and kept.

    A failed fetch raises ``UpstreamUnavailable`` (``UpstreamTimeout`` on a timeout) and
    is tried again by the next caller; callers that were waiting for that fetch get its
    failure instead of fetching again. Thread-safe.
    """

    def __init__(
        self,
        issuer: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        session: requests.Session | None = None,
    ) -> None:
        self.issuer = issuer
        self.url = issuer.rstrip("/") + WELL_KNOWN_PATH
        self._timeouts = (connect_timeout, read_timeout)
        self._session = (
            session
            if session is not None
            else upstream_session(pool_maxsize=2, operation="discovery")
        )
        self._lock = threading.Lock()
        self._document: Mapping[str, Any] | None = None
        self._attempts = 0
        self._failure: BrokerError | None = None

    def __repr__(self) -> str:
        return f"OidcDiscovery({self.issuer!r})"

    def __call__(self) -> Mapping[str, Any]:
        """The document, fetching it when it is not held yet."""
        document = self._document
        if document is not None:
            return document
        seen = self._attempts
        with self._lock:
            if self._document is not None:
                return self._document
            failure = self._failure
            if self._attempts != seen and failure is not None:
                raise type(failure)(failure.detail, log_detail=failure.log_detail)
            try:
                fetched = self._fetch()
            except (UpstreamUnavailable, UpstreamTimeout) as e:
                self._failure = e
                raise
            finally:
                self._attempts += 1
            self._document = fetched
            self._failure = None
            return fetched

    def cached(self) -> Mapping[str, Any] | None:
        """The document once fetched, without fetching it."""
        return self._document

    def _fetch(self) -> Mapping[str, Any]:
        url = self.url
        answer = get_capped(
            self._session,
            url,
            headers={"Accept": "application/json"},
            timeouts=self._timeouts,
            limit=MAX_DISCOVERY_BYTES,
            upstream="the identity provider",
            where=f"discovery document {url}",
        )
        if answer.status != 200 or answer.body is None:
            raise UpstreamUnavailable(
                "identity provider metadata unavailable",
                log_detail=f"discovery document {url} answered HTTP {answer.status}"
                + (f" over {MAX_DISCOVERY_BYTES} bytes" if answer.body is None else ""),
            )
        document = json_object(answer.body)
        if document is None:
            raise UpstreamUnavailable(
                "identity provider metadata unusable",
                log_detail=f"discovery document {url} is not a JSON object",
            )
        if document.get("issuer") != self.issuer:
            raise UpstreamUnavailable(
                "identity provider metadata unusable",
                log_detail=f"discovery document at {url} names another issuer",
            )
        return document
