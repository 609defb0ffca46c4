"""What every store backend checks the same way: TTLs, values, counters and map members."""

from __future__ import annotations

import math
import re

from identity.errors import StoreError

__all__ = ["check_member", "check_member_write", "check_ttl", "check_value", "counter_value"]

_INTEGER = re.compile(rb"-?[0-9]{1,19}")
# Hex or base64url: safe in every backend's field names (DynamoDB attribute names included).
_MEMBER = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_ttl(ttl: float) -> None:
    """Raise ValueError unless ``ttl`` is a finite number of seconds > 0."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")


def check_value(value: bytes) -> None:
    """Raise TypeError unless ``value`` is bytes."""
    if not isinstance(value, bytes):
        raise TypeError(f"store values are bytes, got {type(value).__name__}")


def check_member(member: str) -> None:
    """Raise ValueError unless ``member`` is 1 to 128 letters, digits, ``_`` or ``-``."""
    if not isinstance(member, str) or _MEMBER.fullmatch(member) is None:
        raise ValueError(f"a map member is 1 to 128 of [A-Za-z0-9_-], got {member!r}")


def check_member_write(
    value: bytes, ttl: float, member: str, member_value: bytes, map_ttl: float
) -> None:
    """The checks of ``set_and_add_member``: the record's as ``set``'s, the member's."""
    check_value(value)
    check_ttl(ttl)
    check_member(member)
    check_value(member_value)
    check_ttl(map_ttl)


def counter_value(key: str, value: bytes) -> int:
    """The integer a counter's stored value spells; StoreError when it spells none."""
    if _INTEGER.fullmatch(value) is None:
        raise StoreError(f"cannot increment {key!r}: its value is not an integer")
    return int(value)
