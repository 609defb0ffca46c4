"""The one translation from botocore failures to the broker's error tree.

Clients see a stable ``code`` and a detail that names the AWS error code at most;
AWS's own message, which may quote identifiers and request parameters, goes to
``log_detail`` only.
"""

from __future__ import annotations

import secrets
from typing import Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    ReadTimeoutError,
)

from identity.errors import (
    BrokerError,
    InternalError,
    InvalidToken,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

_SERVICE_NAMES: Final = {
    "cognito-identity": "Amazon Cognito",
    "sts": "AWS STS",
    "chime-sdk-identity": "Amazon Chime SDK",
    "chime-sdk-messaging": "Amazon Chime SDK",
}

_THROTTLED: Final = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ThrottledClientException",
    }
)


class DeadlineExceeded(BotoCoreError):
    """No time was left in ``aws.timeouts.total`` for another attempt of an AWS call."""

    fmt = "{operation}: no time left for attempt {attempt} within {total} s"


# AWS saying it cannot serve now (HTTP 503): ``upstream_unavailable``, not an error to fix.
_UNAVAILABLE: Final = frozenset({"ServiceUnavailable", "ServiceUnavailableException"})

# What an admin can do about the answers that need fixing on the AWS side.
_EXPLAINED: Final = {
    "ResourceNotFoundException": "{name} does not know the identity pool or the identity",
    "InvalidIdentityPoolConfigurationException": "the identity pool's roles are misconfigured",
    "ExternalServiceException": "{name} could not check the login with the identity provider",
    "InternalErrorException": "{name} failed internally",
    "InvalidParameterException": "{name} refused a parameter of the request",
    "RegionDisabledException": "AWS STS is not activated for this account in this region",
    "PackedPolicyTooLarge": "the session tags are too large for AWS STS",
    "MalformedPolicyDocument": "AWS STS refused the session policy",
}

TRUST_POLICY_DETAIL: Final = (
    "AWS STS refused AssumeRole: the user role's trust policy does not let the broker "
    "assume it with session tags; see `chime-broker policies`"
)

# Clients told to come back after a spread of 1..5 s do not return in lockstep.
_RETRY_AFTER_MIN: Final = 1
_RETRY_AFTER_SPREAD: Final = 5


# AWS error codes counted under their own name in metrics; any other is ``other``.
_COUNTED: Final = frozenset(
    {
        *_THROTTLED,
        *_EXPLAINED,
        "NotAuthorizedException",
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredTokenException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServiceFailureException",
        "BadRequestException",
        "ConflictException",
        "ForbiddenException",
        "NotFoundException",
        "UnauthorizedClientException",
        "ResourceLimitExceededException",
        "ValidationException",
    }
)


def is_throttling(code: str) -> bool:
    """Whether ``code`` is AWS saying the broker calls too often."""
    return code in _THROTTLED


def counted_code(code: str) -> str:
    """``code`` if it is one of a closed set of AWS error codes, else ``other``."""
    return code if code in _COUNTED else "other"


def error_code(error: BaseException) -> str | None:
    """The AWS error code of a ``ClientError``, else None."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def translate(error: Exception, *, service: str) -> BrokerError:
    """The :class:`BrokerError` for a failed call to ``service`` (a botocore service name).

    Cognito refusing the token is ``invalid_token``; throttling is ``rate_limited`` and
    AWS answering 503 is ``upstream_unavailable``, both with a ``retry_after`` of 1 to
    5 s; a connection that cannot be made or breaks is ``upstream_unavailable``; a read
    timeout, or no time left in ``aws.timeouts.total`` for another attempt, is
    ``upstream_timeout``; every other AWS answer is ``upstream_error``. A ``BrokerError``
    passes through unchanged and anything that is not from botocore is an
    ``internal_error``.
    """
    if isinstance(error, BrokerError):
        return error
    name = _SERVICE_NAMES.get(service, service)
    if isinstance(error, ClientError):
        return _client_error(error, service=service, name=name)
    log_detail = f"{service}: {type(error).__name__}: {error}"
    if isinstance(error, ReadTimeoutError | DeadlineExceeded):
        return UpstreamTimeout(f"{name} did not answer in time", log_detail=log_detail)
    if isinstance(error, ConnectionError | ConnectionClosedError):
        return UpstreamUnavailable(f"could not reach {name}", log_detail=log_detail)
    if isinstance(error, BotoCoreError):
        return UpstreamError(f"the call to {name} failed", log_detail=log_detail)
    return InternalError(log_detail=log_detail)


def _http_status(error: ClientError) -> int | None:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _client_error(error: ClientError, *, service: str, name: str) -> BrokerError:
    code = error_code(error) or "UnknownError"
    message = error.response.get("Error", {}).get("Message", "")
    operation = getattr(error, "operation_name", None) or "?"
    log_detail = f"{service} {operation}: {code}: {message}"
    if code == "NotAuthorizedException":
        return InvalidToken(f"{name} rejected the login token", log_detail=log_detail)
    if code in _THROTTLED:
        return RateLimited(
            f"{name} is throttling the broker; retry shortly",
            log_detail=log_detail,
            retry_after=_RETRY_AFTER_MIN + secrets.randbelow(_RETRY_AFTER_SPREAD),
        )
    if code in _UNAVAILABLE or _http_status(error) == 503:
        return UpstreamUnavailable(
            f"{name} is unavailable; retry shortly",
            log_detail=log_detail,
            retry_after=_RETRY_AFTER_MIN + secrets.randbelow(_RETRY_AFTER_SPREAD),
        )
    if service == "sts" and code == "AccessDenied":
        return UpstreamError(TRUST_POLICY_DETAIL, log_detail=log_detail)
    explained = _EXPLAINED.get(code)
    detail = explained.format(name=name) if explained else f"{name} refused the request"
    return UpstreamError(f"{detail} ({code})", log_detail=log_detail)
