"""What the broker counts as it works: vends, upstream calls, cache lookups, sessions and
refused logins.

The domain reports to :func:`current`, the telemetry of the request being served: the HTTP
layer binds its metrics for the length of each request (as the log's request id is bound),
so a process that serves several apps (tests) keeps each app's counts apart, and work done
outside a request (start-up, the CLI) is counted nowhere. Every label value passed here is
from a closed set (the config's providers and exchange modes, the API's operations, the
problem codes); the sink bounds again those a caller could widen (providers, identity-provider
operations, outcomes, origins, codes).
"""

from __future__ import annotations

import contextvars
from typing import Final, Literal, Protocol

Upstream = Literal["aws", "idp"]
Cache = Literal["credentials", "identity_id"]

# Error labels for a call that got no answer (AWS error codes and HTTP classes otherwise).
NO_ANSWER_TIMEOUT: Final = "timeout"
NO_ANSWER_CONNECTION: Final = "connection"


class Telemetry(Protocol):
    """The broker's counters; every method is cheap and never raises."""

    def upstream_call(
        self, upstream: Upstream, operation: str, seconds: float, error: str | None
    ) -> None:
        """One call to AWS or an identity provider, retries included; ``error`` is None on
        success, else the AWS error code, ``http_4xx``/``http_5xx``, ``timeout`` or
        ``connection``."""
        ...

    def vend(self, provider: str, exchange: str, outcome: str) -> None:
        """Credentials asked for: ``vended``, ``reused`` (the credential cache), or the
        error code that refused them."""
        ...

    def cache_lookup(self, cache: Cache, hit: bool) -> None:
        """A lookup in the credential cache or the Cognito identity-id cache."""
        ...

    def session_started(self, origin: str) -> None: ...

    def session_ended(self, origin: str) -> None: ...

    def login_refused(self, code: str) -> None:
        """A sign-in (browser, native, token exchange, guest) refused with ``code``."""
        ...


class _Uncounted:
    """Where reports go outside a request."""

    def upstream_call(
        self, upstream: Upstream, operation: str, seconds: float, error: str | None
    ) -> None:
        return

    def vend(self, provider: str, exchange: str, outcome: str) -> None:
        return

    def cache_lookup(self, cache: Cache, hit: bool) -> None:
        return

    def session_started(self, origin: str) -> None:
        return

    def session_ended(self, origin: str) -> None:
        return

    def login_refused(self, code: str) -> None:
        return


_UNCOUNTED: Final = _Uncounted()
_current: contextvars.ContextVar[Telemetry | None] = contextvars.ContextVar(
    "telemetry", default=None
)


def current() -> Telemetry:
    """The telemetry of the request being served (a sink that counts nothing outside one)."""
    return _current.get() or _UNCOUNTED


def bind(telemetry: Telemetry) -> contextvars.Token[Telemetry | None]:
    """Report to ``telemetry`` until :func:`unbind` with the returned token."""
    return _current.set(telemetry)


def unbind(token: contextvars.Token[Telemetry | None]) -> None:
    _current.reset(token)
