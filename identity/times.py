"""Moments as the broker writes them: RFC 3339 in UTC, whole seconds
(``2026-11-27T05:00:00Z``), in the credentials body, the audit trail, IAM conditions and
the admin commands' output."""

from __future__ import annotations

import math
import time
from datetime import datetime
from functools import lru_cache

__all__ = ["rfc3339"]


@lru_cache(maxsize=4096)
def _second(second: int) -> str:
    # Credentials are handed out again and again with the same expiry: each second is
    # formatted once (strftime is most of the cost of a cached refresh's two timestamps).
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def rfc3339(moment: datetime | float) -> str:
    """``moment`` (a datetime, a naive one in local time; or seconds since the epoch) in
    UTC, the fraction of a second dropped."""
    at = moment.timestamp() if isinstance(moment, datetime) else moment
    return _second(math.floor(at))
