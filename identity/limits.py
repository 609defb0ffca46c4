"""The value rules of Amazon Chime and AWS STS, each defined once.

Config validation (what a template can produce, which tag keys are usable) and the run-time
mapper (what a login did produce) both check against these. Lengths are counted the way the
AWS services count them: in UTF-16 code units, since their validators are Java strings. A
character outside the Basic Multilingual Plane (most emoji, or U+1D400 MATHEMATICAL BOLD
CAPITAL A) therefore counts as two; a combining mark (``e`` followed by U+0301) is a
character of its own and counts as one.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# -- Chime AppInstanceUserId ---------------------------------------------------------------

USER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9:\-_.@]{0,62}[A-Za-z0-9])?")
"""Chime's AppInstanceUserId rule, used with ``fullmatch``."""
USER_ID_MAX_LENGTH: Final = 64
USER_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_.@"
)
USER_ID_CHARS_HELP: Final = "ASCII letters, digits and : - _ . @ only"

DISPLAY_NAME_MAX_LENGTH: Final = 100
"""Chime's AppInstanceUser ``Name``: 1 to 100."""

# -- STS session tags (Cognito PrincipalTags follow the same rules) ------------------------

TAG_VALUE_PATTERN: Final = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*"
"""STS's rule for tag keys and values; Python's ``re`` has no ``\\p`` classes, so
``first_bad_tag_char`` implements it character by character."""
TAG_KEY_MAX_LENGTH: Final = 128
TAG_VALUE_MAX_LENGTH: Final = 256
MAX_TAGS: Final = 50
TAG_CHARS_HELP: Final = "letters, digits, spaces and _ . : / = + - @"
RESERVED_TAG_PREFIX: Final = "aws:"

_TAG_PUNCTUATION: Final = frozenset("_.:/=+-@")
# The ASCII subset of the tag rule: most values never need the per-character check.
_ASCII_TAG_TEXT: Final = re.compile(r"[A-Za-z0-9 _.:/=+\-@]*")

# -- STS RoleSessionName and SourceIdentity ------------------------------------------------

SESSION_NAME_PATTERN: Final = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
SESSION_NAME_UNSAFE: Final = re.compile(r"[^\w+=,.@-]", re.ASCII)
SESSION_NAME_MIN_LENGTH: Final = 2
SESSION_NAME_MAX_LENGTH: Final = 64


def aws_length(value: str) -> int:
    """``value``'s length as AWS counts it: UTF-16 code units."""
    if value.isascii():
        return len(value)
    return len(value) + sum(1 for ch in value if ch > "\uffff")


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a valid Chime AppInstanceUserId (ASCII only, so every count of
    its length agrees)."""
    return USER_ID_PATTERN.fullmatch(value) is not None


def first_bad_tag_char(value: str) -> str | None:
    """The first character outside STS's ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]``, if any."""
    if _ASCII_TAG_TEXT.fullmatch(value):
        return None
    for ch in value:
        if ch not in _TAG_PUNCTUATION and unicodedata.category(ch)[0] not in "LZN":
            return ch
    return None


def is_tag_text(value: str) -> bool:
    """Whether every character of ``value`` is allowed in an STS tag key or value."""
    return first_bad_tag_char(value) is None


def tag_key_problem(key: str) -> str | None:
    """What STS would refuse about ``key`` as a tag key, or ``None``."""
    if not key:
        return "a tag key cannot be empty"
    if aws_length(key) > TAG_KEY_MAX_LENGTH:
        return f"tag key is longer than {TAG_KEY_MAX_LENGTH} characters"
    if not is_tag_text(key):
        return f"tag key {key!r} has characters STS does not allow ({TAG_CHARS_HELP})"
    if key[: len(RESERVED_TAG_PREFIX)].lower() == RESERVED_TAG_PREFIX:
        return f"tag key {key!r} uses the reserved prefix {RESERVED_TAG_PREFIX!r}"
    return None


def is_tag_value(value: str) -> bool:
    """Whether STS accepts ``value`` as a session tag value."""
    return aws_length(value) <= TAG_VALUE_MAX_LENGTH and is_tag_text(value)
