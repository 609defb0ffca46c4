"""What every vending mode takes and returns: one request in, short-lived credentials out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from identity.config.models import ProviderBase
from identity.models import MappedUser, Principal, VendedCredentials


@dataclass(frozen=True)
class VendRequest:
    """Who to vend for and for how long at most.

    ``max_duration`` is the number of seconds the broker session has left (None when
    unbounded): no credentials should outlive the session that asked for them, where
    the AWS service lets the broker choose.
    """

    provider: ProviderBase
    user: MappedUser
    principal: Principal
    max_duration: int | None = None


class Vendor(Protocol):
    """One exchange mode (``cognito``, ``cognito_developer``, ``sts``)."""

    def vend(self, request: VendRequest) -> VendedCredentials:
        """Obtain credentials that act as ``request.user`` and nobody else.

        Raises a :class:`~identity.errors.BrokerError` (``invalid_token``,
        ``rate_limited``, ``upstream_*``) when AWS refuses or cannot be reached.
        """
        ...


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (botocore may hand back local or naive times)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
