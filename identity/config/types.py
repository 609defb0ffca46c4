"""Field types of the configuration: URLs, origins, return targets, names, ARNs, durations
and sizes, each a pydantic ``Annotated`` type with its own plain-words error."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic import ByteSize as PydanticByteSize

from identity import limits
from identity.store import validate_store_url
from identity.templates import TemplateError, claim_path_problem, compile_template, is_claim_path

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_SECRET_KEY_LENGTH: Final = 32

REGION: Final = r"[a-z]{2}(?:-[a-z]+)+-\d+"
APP_INSTANCE_ARN: Final = re.compile(
    rf"arn:aws:chime:({REGION}):(\d{{12}}):app-instance/([A-Za-z0-9][A-Za-z0-9-]{{0,63}})"
)
USER_POOL_ID: Final = re.compile(rf"({REGION})_[0-9a-zA-Z]{{1,40}}")
_REGION_RE: Final = re.compile(REGION)
_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}"
)
_IDENTITY_POOL_ID: Final = re.compile(rf"({REGION}):[0-9a-f-]{{1,50}}")
_DEVELOPER_PROVIDER: Final = re.compile(r"[\w.-]{1,128}")
_PROVIDER_NAME: Final = re.compile(r"[a-z0-9-]{1,32}")
_COOKIE_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_UNSAFE_SCHEMES: Final = frozenset(
    {"javascript", "data", "file", "vbscript", "blob", "about", "ftp", "ws", "wss"}
)


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is 127.0.0.1, ::1 or localhost."""
    try:
        return urlsplit(url).hostname in LOOPBACK_HOSTS
    except ValueError:
        return False


def split_url(value: str) -> SplitResult:
    """``urlsplit`` that refuses spaces, control characters and bad ports."""
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValueError("a URL cannot contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- parsing the port raises on a bad one
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL") from exc
    return parts


def _secure_url(value: str) -> str:
    parts = split_url(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL here cannot carry a user name or password")
    if parts.fragment:
        raise ValueError("a URL here cannot have a #fragment")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("must use https (plain http only on 127.0.0.1, ::1 or localhost)")
    return value


def _public_url(value: str) -> str:
    parts = urlsplit(_secure_url(value))
    if parts.query:
        raise ValueError("the public URL cannot have a query")
    # Stored without a trailing slash so that paths can be appended.
    return value.rstrip("/")


def _origin(value: str) -> str:
    if value in ("null", "*"):
        raise ValueError(f"{value!r} is not an origin: list each allowed origin exactly")
    parts = urlsplit(_secure_url(value))
    exact = f"{parts.scheme}://{parts.netloc}"
    if parts.path or parts.query:
        raise ValueError(f"an origin has no path: write {exact.lower()!r}")
    if value != value.lower():
        raise ValueError(f"origins are compared exactly: write {value.lower()!r}")
    if (parts.scheme, parts.port) in (("https", 443), ("http", 80)):
        raise ValueError(
            f"browsers omit the default port: write '{parts.scheme}://{parts.hostname}'"
        )
    return value


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in unquote(path).replace("\\", "/").split("/"))


def _return_to_entry(value: str) -> str:
    parts = split_url(value)
    scheme = parts.scheme
    if not scheme or ":" not in value:
        raise ValueError(
            "must be an https origin with a path prefix, or a native app's custom scheme"
        )
    if value[: len(scheme)] != scheme:
        raise ValueError("write the scheme in lower case")
    if parts.query or parts.fragment:
        raise ValueError("an allowed return_to cannot have a query or #fragment")
    if _has_dot_segment(parts.path):
        raise ValueError("an allowed return_to cannot contain '.' or '..' path segments")
    if scheme in ("https", "http"):
        _secure_url(value)
        if not parts.path.startswith("/"):
            raise ValueError(
                f"needs a path after the origin, such as {value + '/'!r} "
                "(without one it would also match other hosts)"
            )
        if parts.netloc != parts.netloc.lower():
            raise ValueError("write the host in lower case")
    elif scheme in _UNSAFE_SCHEMES:
        raise ValueError(f"the {scheme}: scheme is never a safe place to return to")
    elif "." not in scheme:
        raise ValueError(
            "a native app's custom scheme must be a reverse domain name such as "
            "'com.example.app' (RFC 8252, 7.1)"
        )
    return value


LOOPBACK_ANY_PORT = ("http://127.0.0.1/", "http://[::1]/")


def _loopback_any_port(allowed: SplitResult, given: SplitResult) -> bool:
    """``given`` is ``allowed`` (``http://127.0.0.1/`` or ``http://[::1]/``) on some port."""
    try:
        port = given.port
    except ValueError:
        return False
    host = allowed.netloc
    return (
        port is not None
        and given.netloc == f"{host}:{port}"
        and given.username is None
        and given.password is None
    )


def return_to_matches(entry: str, url: str, *, loopback_any_port: bool = False) -> bool:
    """Whether ``url`` falls under the allowed ``return_to`` ``entry``: the same scheme and
    host exactly, a path under its prefix, no dot segments, backslashes or controls.

    With ``loopback_any_port`` (native logins), an entry of exactly ``http://127.0.0.1/``
    or ``http://[::1]/`` also matches that host on any port (RFC 8252, 7.3)."""
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        return False
    try:
        allowed, given = urlsplit(entry), urlsplit(url)
    except ValueError:
        return False
    if given.scheme != allowed.scheme:
        return False
    if given.netloc != allowed.netloc and not (
        loopback_any_port and entry in LOOPBACK_ANY_PORT and _loopback_any_port(allowed, given)
    ):
        return False
    if _has_dot_segment(given.path):
        return False
    prefix = allowed.path
    return given.path == prefix or given.path.startswith(
        prefix if prefix.endswith("/") else prefix + "/"
    )


def pattern(regex: re.Pattern[str], message: str) -> Callable[[str], str]:
    """A validator that accepts what ``regex`` fully matches; ``message`` may use
    ``{value}``."""

    def check(value: str) -> str:
        if regex.fullmatch(value) is None:
            raise ValueError(message.format(value=value))
        return value

    return check


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"(\d+)\s*([smhd])")


def show_bytes(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def show_seconds(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        if match := _DURATION.fullmatch(text):
            return int(match[1]) * _UNITS[match[2]]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("expected a duration such as '8h', '15m', '30s', '1d' or a number of seconds")


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a size such as '64KiB', '1MiB' or a number of bytes")
    return value


def in_range(value: int, minimum: int, maximum: int, show: Callable[[int], str]) -> int:
    if not minimum <= value <= maximum:
        raise ValueError(f"must be from {show(minimum)} to {show(maximum)}")
    return value


def _template_syntax(value: str) -> str:
    try:
        compile_template(value, allow_random=True)
    except TemplateError as exc:
        raise ValueError(exc.message) from exc
    return value


def _store_url(value: str) -> str:
    validate_store_url(value)
    return value


def _scopes(value: tuple[str, ...]) -> tuple[str, ...]:
    for scope in value:
        if not scope or any(ch.isspace() for ch in scope):
            raise ValueError(f"scope {scope!r} is empty or has spaces")
    if "openid" not in value:
        raise ValueError("must include 'openid'")
    return value


def _require_rule(value: Any) -> Any:
    scalar = (str, bool, int)
    if isinstance(value, scalar):
        return value
    if isinstance(value, dict) and value:
        for op, options in value.items():
            if op not in ("any_of", "all_of"):
                raise ValueError(f"unknown condition {op!r}; use any_of or all_of")
            if not isinstance(options, list) or not options:
                raise ValueError(f"{op} needs a non-empty list")
            if not all(isinstance(option, scalar) for option in options):
                raise ValueError(f"{op} takes strings, integers and booleans only")
        return value
    raise ValueError("expected a string, an integer, a boolean, {any_of: [...]} or {all_of: [...]}")


def _claim_name(value: str) -> str:
    if not is_claim_path(value):
        raise ValueError(claim_path_problem(value))
    return value


def _tag_key(value: str) -> str:
    problem = limits.tag_key_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Duration = Annotated[int, BeforeValidator(_parse_duration)]
"""Seconds, written ``8h``, ``15m``, ``30s``, ``1d`` or as a number."""
ByteSize = Annotated[PydanticByteSize, BeforeValidator(_not_a_boolean)]
"""Bytes, written ``64KiB``, ``1MiB``, ``64kB`` (decimal), ``512B`` or as a number."""
NonEmptyStr = Annotated[str, Field(min_length=1)]
SecureUrl = Annotated[str, AfterValidator(_secure_url)]
PublicUrl = Annotated[str, AfterValidator(_public_url)]
Origin = Annotated[str, AfterValidator(_origin)]
ReturnTo = Annotated[str, AfterValidator(_return_to_entry)]
TemplateText = Annotated[str, AfterValidator(_template_syntax)]
StoreUrl = Annotated[str, AfterValidator(_store_url)]
Scopes = Annotated[tuple[NonEmptyStr, ...], AfterValidator(_scopes)]
RequireRule = Annotated[Any, AfterValidator(_require_rule)]
ClaimName = Annotated[str, AfterValidator(_claim_name)]
TagKey = Annotated[str, AfterValidator(_tag_key)]
Region = Annotated[
    str, AfterValidator(pattern(_REGION_RE, "{value!r} is not an AWS region such as 'us-east-1'"))
]
RoleArn = Annotated[
    str,
    AfterValidator(
        pattern(_ROLE_ARN, "{value!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    ),
]
IdentityPoolId = Annotated[
    str,
    AfterValidator(
        pattern(_IDENTITY_POOL_ID, "{value!r} is not an identity pool id (REGION:GUID)")
    ),
]
AppInstanceArn = Annotated[
    str,
    AfterValidator(
        pattern(
            APP_INSTANCE_ARN,
            "{value!r} is not an app instance ARN (arn:aws:chime:REGION:ACCOUNT:app-instance/ID)",
        )
    ),
]
UserPoolId = Annotated[
    str, AfterValidator(pattern(USER_POOL_ID, "{value!r} is not a user pool id (REGION_ID)"))
]
ProviderName = Annotated[
    str,
    AfterValidator(
        pattern(
            _PROVIDER_NAME,
            "{value!r} must be 1 to 32 characters of a-z, 0-9 and '-' (it is used in URLs)",
        )
    ),
]
DeveloperProviderName = Annotated[
    str,
    AfterValidator(
        pattern(_DEVELOPER_PROVIDER, "{value!r} must be 1 to 128 letters, digits and . _ -")
    ),
]
CookieName = Annotated[
    str,
    AfterValidator(pattern(_COOKIE_NAME, "{value!r} is not a valid cookie name")),
]
