"""The broker's error tree: every failure a request can meet has a stable ``code``.

``service/errors.py`` is the one place these become HTTP responses. ``detail`` is
safe to show to the client; ``log_detail`` goes to the log only.
"""

from __future__ import annotations


class BrokerError(Exception):
    """A failure with a stable machine code, a title and an HTTP status hint."""

    code = "internal_error"
    title = "Internal error"
    status = 500

    def __init__(
        self,
        detail: str | None = None,
        *,
        log_detail: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.log_detail = log_detail
        self.retry_after = retry_after


class InvalidRequest(BrokerError):
    """The request is malformed: body, fields or parameters."""

    code, title, status = "invalid_request", "Invalid request", 400


class Unauthenticated(BrokerError):
    """No broker session, or an unknown or ended one."""

    code, title, status = "unauthenticated", "Not signed in", 401


class InvalidToken(BrokerError):
    """An upstream token or assertion failed verification."""

    code, title, status = "invalid_token", "Invalid token", 401


class InvalidLogoutToken(BrokerError):
    """A back-channel logout token failed verification: OIDC Back-Channel Logout 1.0
    (2.8) has the identity provider told so with a 400, not a 401."""

    code, title, status = "invalid_logout_token", "Invalid logout token", 400


class ReauthenticationRequired(BrokerError):
    """The session can no longer vend without a new login."""

    code, title, status = "reauthentication_required", "Sign-in required", 401


class OriginNotAllowed(BrokerError):
    """A cookie-authenticated request from an Origin not on the allow-list."""

    code, title, status = "origin_not_allowed", "Origin not allowed", 403


class AccessDenied(BrokerError):
    """Claim rules or the identity provider refused the user."""

    code, title, status = "access_denied", "Access denied", 403


class NotFound(BrokerError):
    """No such route."""

    code, title, status = "not_found", "Not found", 404


class UnknownProvider(BrokerError):
    """No identity provider of that name is configured."""

    code, title, status = "unknown_provider", "Unknown provider", 404


class MethodNotAllowed(BrokerError):
    """The route exists, the method does not."""

    code, title, status = "method_not_allowed", "Method not allowed", 405


class PayloadTooLarge(BrokerError):
    """The request body is over the cap."""

    code, title, status = "payload_too_large", "Payload too large", 413


class UnsupportedMediaType(BrokerError):
    """The request body has a content type the endpoint does not take."""

    code, title, status = "unsupported_media_type", "Unsupported media type", 415


class UnmappableIdentity(BrokerError):
    """The identity cannot become a valid user id or tag."""

    code, title, status = "unmappable_identity", "Unmappable identity", 422


class RateLimited(BrokerError):
    """Too many requests; ``retry_after`` says when to come back."""

    code, title, status = "rate_limited", "Too many requests", 429


class InternalError(BrokerError):
    """A bug or an unexpected state; the client sees only the request id."""


class UpstreamError(BrokerError):
    """AWS or the identity provider answered with an error the broker cannot fix."""

    code, title, status = "upstream_error", "Upstream error", 502


class UpstreamUnavailable(BrokerError):
    """AWS or the identity provider could not be reached."""

    code, title, status = "upstream_unavailable", "Upstream unavailable", 503


# Seconds a client is asked to wait after a store failure: about one reconnect attempt.
STORE_RETRY_AFTER = 5


class StoreUnavailable(UpstreamUnavailable):
    """The state store failed: unreachable, timed out, throttled, read-only or locked.
    Nothing was decided; the same request may succeed once the store is back."""

    title = "State store unavailable"

    def __init__(self, detail: str | None = None, *, log_detail: str | None = None) -> None:
        super().__init__(
            detail or "the broker's state store is unavailable; try again shortly",
            log_detail=log_detail,
            retry_after=STORE_RETRY_AFTER,
        )


class UpstreamTimeout(BrokerError):
    """AWS or the identity provider did not answer in time."""

    code, title, status = "upstream_timeout", "Upstream timeout", 504


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every one, each with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class StoreError(Exception):
    """The state store could not be reached or answered wrongly. Raised by every backend;
    a request that meets one answers :class:`StoreUnavailable`."""
