"""The broker's configuration: one YAML file -> a frozen, validated ``BrokerConfig``.

``load_config`` / ``parse_config`` read YAML with a safe loader that remembers where each
key is, interpolate ``${env:NAME}``, validate every section and every cross-field rule of
the design (§2), and raise ``ConfigError`` listing every problem, each as
``providers[1].map.user_id (line 23): message``.  ``build_config`` does the same for a
Python mapping (tests).  Templates are compiled here, once, and cached on the models.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, get_args
from urllib.parse import SplitResult, unquote, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from identity.errors import ConfigError
from identity.templates import (
    MUTABLE_CLAIMS,
    Template,
    TemplateError,
    compile_template,
    is_claim_path,
)

Path: TypeAlias = tuple[str | int, ...]

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_SECRET_KEY_LENGTH: Final = 32
MAX_TAGS: Final = 50
TAG_KEY_MAX_LENGTH: Final = 128
TAG_VALUE_MAX_LENGTH: Final = 256

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
_REGION_RE: Final = re.compile(_REGION)
_APP_INSTANCE_ARN: Final = re.compile(
    rf"arn:aws:chime:({_REGION}):(\d{{12}}):app-instance/([A-Za-z0-9][A-Za-z0-9-]{{0,63}})"
)
_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}"
)
_IDENTITY_POOL_ID: Final = re.compile(rf"({_REGION}):[0-9a-f-]{{1,50}}")
_USER_POOL_ID: Final = re.compile(rf"({_REGION})_[0-9a-zA-Z]{{1,40}}")
_DEVELOPER_PROVIDER: Final = re.compile(r"[\w.-]{1,128}")
_PROVIDER_NAME: Final = re.compile(r"[a-z0-9-]{1,32}")
_COOKIE_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_APP_INSTANCE_USER_ID: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9:\-_.@]{0,62}[A-Za-z0-9])?")
_USER_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:-_.@"
)
_TAG_PUNCTUATION: Final = frozenset("_.:/=+-@")
_ASCII_TAG_TEXT: Final = re.compile(r"[A-Za-z0-9 _.:/=+\-@]*")
_UNSAFE_SCHEMES: Final = frozenset(
    {"javascript", "data", "file", "vbscript", "blob", "about", "ftp", "ws", "wss"}
)
_TAG_CHARS_HELP: Final = "letters, digits, spaces and _ . : / = + - @"


# -- rules shared with the run-time checks ---------------------------------------------


def is_app_instance_user_id(value: str) -> bool:
    """Whether ``value`` is a valid Chime AppInstanceUserId."""
    return _APP_INSTANCE_USER_ID.fullmatch(value) is not None


def is_tag_text(value: str) -> bool:
    """Whether every character of ``value`` fits STS's ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]``."""
    if _ASCII_TAG_TEXT.fullmatch(value):
        return True
    return all(ch in _TAG_PUNCTUATION or unicodedata.category(ch)[0] in "LZN" for ch in value)


def is_tag_value(value: str) -> bool:
    """Whether STS accepts ``value`` as a session tag value."""
    return len(value) <= TAG_VALUE_MAX_LENGTH and is_tag_text(value)


def _tag_key_problem(key: str) -> str | None:
    if not key:
        return "a tag key cannot be empty"
    if len(key) > TAG_KEY_MAX_LENGTH:
        return f"tag key is longer than {TAG_KEY_MAX_LENGTH} characters"
    if not is_tag_text(key):
        return f"tag key {key!r} has characters STS does not allow ({_TAG_CHARS_HELP})"
    if key[:4].lower() == "aws:":
        return f"tag key {key!r} uses the reserved prefix 'aws:'"
    return None


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is 127.0.0.1, ::1 or localhost."""
    try:
        return urlsplit(url).hostname in LOOPBACK_HOSTS
    except ValueError:
        return False


# -- field types -----------------------------------------------------------------------


def _split_url(value: str) -> SplitResult:
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValueError("a URL cannot contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- parsing the port raises on a bad one
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL") from exc
    return parts


def _secure_url(value: str) -> str:
    parts = _split_url(value)
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
    parts = _split_url(value)
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


def _return_to_matches(entry: str, url: str) -> bool:
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        return False
    try:
        allowed, given = urlsplit(entry), urlsplit(url)
    except ValueError:
        return False
    if given.scheme != allowed.scheme or given.netloc != allowed.netloc:
        return False
    if _has_dot_segment(given.path):
        return False
    prefix = allowed.path
    return given.path == prefix or given.path.startswith(
        prefix if prefix.endswith("/") else prefix + "/"
    )


def _pattern(regex: re.Pattern[str], message: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if regex.fullmatch(value) is None:
            raise ValueError(message.format(value=value))
        return value

    return check


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"(\d+)\s*([smhd])")
_SIZE_UNITS: Final = {"b": 1, "kib": 1024, "mib": 1024 * 1024}
_SIZE: Final = re.compile(r"(\d+)\s*(B|KiB|MiB)", re.IGNORECASE)


def _show_bytes(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _show_seconds(seconds: int) -> str:
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


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        if match := _SIZE.fullmatch(text):
            return int(match[1]) * _SIZE_UNITS[match[2].lower()]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError("expected a size such as '64KiB', '1MiB' or a number of bytes")


Duration = Annotated[int, BeforeValidator(_parse_duration)]
"""Seconds, written ``8h``, ``15m``, ``30s``, ``1d`` or as a number."""
ByteSize = Annotated[int, BeforeValidator(_parse_size)]
"""Bytes, written ``64KiB``, ``1MiB``, ``512B`` or as a number."""


def _in_range(value: int, minimum: int, maximum: int, show: Callable[[int], str]) -> int:
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
    scheme, sep, rest = value.partition("://")
    if scheme == "memory" and sep:
        if rest:
            raise ValueError("memory:// takes nothing after it")
        return value
    if scheme == "sqlite" and sep:
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(
                "write sqlite:///RELATIVE/PATH or sqlite:////ABSOLUTE/PATH (three or four slashes)"
            )
        return value
    if scheme in ("redis", "rediss") and sep:
        parts = _split_url(value)
        if not parts.hostname:
            raise ValueError("a redis:// store needs a host: redis://HOST[:PORT][/DB]")
        return value
    raise ValueError("must be memory://, sqlite:///PATH, redis://HOST[:PORT][/DB] or rediss://...")


def _scopes(value: tuple[str, ...]) -> tuple[str, ...]:
    for scope in value:
        if not scope or any(ch.isspace() for ch in scope):
            raise ValueError(f"scope {scope!r} is empty or has spaces")
    if "openid" not in value:
        raise ValueError("must include 'openid'")
    return value


NonEmptyStr = Annotated[str, Field(min_length=1)]
SecureUrl = Annotated[str, AfterValidator(_secure_url)]
PublicUrl = Annotated[str, AfterValidator(_public_url)]
Origin = Annotated[str, AfterValidator(_origin)]
ReturnTo = Annotated[str, AfterValidator(_return_to_entry)]
TemplateText = Annotated[str, AfterValidator(_template_syntax)]
StoreUrl = Annotated[str, AfterValidator(_store_url)]
Region = Annotated[
    str, AfterValidator(_pattern(_REGION_RE, "{value!r} is not an AWS region such as 'us-east-1'"))
]
RoleArn = Annotated[
    str,
    AfterValidator(
        _pattern(_ROLE_ARN, "{value!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    ),
]
ProviderName = Annotated[
    str,
    AfterValidator(
        _pattern(
            _PROVIDER_NAME,
            "{value!r} must be 1 to 32 characters of a-z, 0-9 and '-' (it is used in URLs)",
        )
    ),
]
DeveloperProviderName = Annotated[
    str,
    AfterValidator(
        _pattern(_DEVELOPER_PROVIDER, "{value!r} must be 1 to 128 letters, digits and . _ -")
    ),
]
CookieName = Annotated[
    str,
    AfterValidator(_pattern(_COOKIE_NAME, "{value!r} is not a valid cookie name")),
]


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


RequireRule = Annotated[Any, AfterValidator(_require_rule)]


def _tag_key(value: str) -> str:
    problem = _tag_key_problem(value)
    if problem:
        raise ValueError(problem)
    return value


TagKey = Annotated[str, AfterValidator(_tag_key)]


# -- models ------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class CognitoConfig(_Frozen):
    """The Cognito identity pool used by ``exchange: cognito`` and ``cognito_developer``."""

    identity_pool_id: Annotated[
        str,
        AfterValidator(
            _pattern(
                _IDENTITY_POOL_ID,
                "{value!r} is not an identity pool id (REGION:GUID)",
            )
        ),
    ]
    developer_provider_name: DeveloperProviderName | None = None
    token_duration: int = Field(300, ge=1, le=86400)

    @property
    def region(self) -> str:
        """The region the pool lives in, from its id."""
        return self.identity_pool_id.partition(":")[0]


class StsConfig(_Frozen):
    """``exchange: sts``: the default user role and how long its sessions last."""

    role_arn: RoleArn
    duration_seconds: int = Field(3600, ge=900, le=43200)


class Timeouts(_Frozen):
    """Connect and read timeouts (seconds) for every AWS call."""

    connect: Annotated[float, Field(gt=0, le=60)] = 2.0
    read: Annotated[float, Field(gt=0, le=300)] = 5.0


class AwsConfig(_Frozen):
    """Where AWS is: region, identity pool, STS role, timeouts.  No keys: the SDK's chain."""

    region: Region
    cognito: CognitoConfig | None = None
    sts: StsConfig | None = None
    timeouts: Timeouts = Timeouts()


class ChimeConfig(_Frozen):
    """The Chime SDK app instance the users belong to."""

    app_instance_arn: Annotated[
        str,
        AfterValidator(
            _pattern(
                _APP_INSTANCE_ARN,
                "{value!r} is not an app instance ARN "
                "(arn:aws:chime:REGION:ACCOUNT:app-instance/ID)",
            )
        ),
    ]
    user_tag: TagKey = "my_applications_user_id"
    provision_users: bool = False
    messaging_endpoint: bool = False

    def _arn_part(self, group: int) -> str:
        match = _APP_INSTANCE_ARN.fullmatch(self.app_instance_arn)
        assert match is not None  # validated on construction
        return match[group]

    @property
    def region(self) -> str:
        """The app instance's region, from its ARN."""
        return self._arn_part(1)

    @property
    def account_id(self) -> str:
        """The app instance's AWS account, from its ARN."""
        return self._arn_part(2)

    @property
    def app_instance_id(self) -> str:
        """The app instance's id, from its ARN."""
        return self._arn_part(3)


class ServiceConfig(_Frozen):
    """The HTTP service: public URL, secret, sessions, CORS and return_to allow-lists."""

    public_url: PublicUrl
    secret_key: SecretStr | None = None
    session_lifetime: Duration = 8 * 3600
    recheck_interval: Duration = 15 * 60
    cookie_name: CookieName = "chime_broker_session"
    allowed_origins: tuple[Origin, ...] = ()
    allowed_return_to: tuple[ReturnTo, ...] = ()
    default_return_to: str | None = None
    trusted_proxies: int = Field(0, ge=0, le=10)
    max_body: ByteSize = 64 * 1024
    cache_credentials: bool = True

    @field_validator("session_lifetime")
    @classmethod
    def _lifetime_range(cls, value: int) -> int:
        return _in_range(value, 60, 365 * 86400, _show_seconds)

    @field_validator("recheck_interval")
    @classmethod
    def _recheck_range(cls, value: int) -> int:
        return _in_range(value, 30, 7 * 86400, _show_seconds)

    @field_validator("max_body")
    @classmethod
    def _body_range(cls, value: int) -> int:
        return _in_range(value, 1024, 16 * 1024 * 1024, _show_bytes)

    @property
    def effective_default_return_to(self) -> str | None:
        """``default_return_to``, else the first allowed ``return_to``, else ``None``."""
        if self.default_return_to is not None:
            return self.default_return_to
        return self.allowed_return_to[0] if self.allowed_return_to else None

    def return_to_allowed(self, url: str) -> bool:
        """Whether ``url`` may be returned to: same scheme and host (exactly) as an entry of
        ``allowed_return_to`` and a path under its path prefix, with no dot segments,
        backslashes or control characters."""
        return any(_return_to_matches(entry, url) for entry in self.allowed_return_to)


class MapConfig(_Frozen):
    """How claims become the user id, display name and extra tags, and who may sign in.

    ``require`` values are a scalar (equality) or ``{any_of: [...]}`` / ``{all_of: [...]}``.
    """

    user_id: TemplateText | None = None
    display_name: TemplateText | None = None
    tags: dict[str, TemplateText] = Field(default_factory=dict)
    require: dict[str, RequireRule] = Field(default_factory=dict)

    @field_validator("require")
    @classmethod
    def _claim_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for claim in value:
            if not is_claim_path(claim):
                raise ValueError(f"{claim!r} is not a valid claim name or dotted path")
        return value


Exchange = Literal["cognito", "cognito_developer", "sts"]
_EXCHANGE_HELP: Final = "cognito_developer or sts"


class ProviderBase(_Frozen):
    """What every identity provider entry has; ``kind`` selects the subclass."""

    default_user_id: ClassVar[str] = "{sub}"
    # False for kinds that have no id token to carry a nonce.
    _nonce_capable: ClassVar[bool] = True

    name: ProviderName
    kind: str
    display_name: Annotated[str, Field(min_length=1, max_length=100)] = ""
    exchange: Exchange
    role_arn: RoleArn | None = None
    custom_role_arn: RoleArn | None = None
    leeway: int = Field(60, ge=0, le=600)
    require_nonce: bool = False
    map: MapConfig = Field(default_factory=MapConfig)
    allow_shared_user_ids: bool = False

    _user_id_template: Template = PrivateAttr()
    _display_name_template: Template | None = PrivateAttr(default=None)
    _tag_templates: dict[str, Template] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _display_name_defaults_to_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "display_name" not in data and "name" in data:
            return {**data, "display_name": data["name"]}
        return data

    @model_validator(mode="after")
    def _compile_templates(self) -> ProviderBase:
        # Syntax was checked field by field; {random} outside guests is a rule, reported
        # with its path by the cross-field checks.
        self._user_id_template = compile_template(
            self.map.user_id or self.default_user_id, allow_random=True
        )
        if self.map.display_name is not None:
            self._display_name_template = compile_template(self.map.display_name, allow_random=True)
        self._tag_templates = {
            key: compile_template(text, allow_random=True) for key, text in self.map.tags.items()
        }
        return self

    @property
    def user_id_template(self) -> Template:
        """``map.user_id`` compiled, or this kind's default."""
        return self._user_id_template

    @property
    def display_name_template(self) -> Template | None:
        """``map.display_name`` compiled; ``None`` means: show the user id."""
        return self._display_name_template

    @property
    def tag_templates(self) -> Mapping[str, Template]:
        """``map.tags`` compiled, keyed by tag key."""
        return self._tag_templates

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        """Every URL this provider's entry makes the broker contact, with its key path."""
        return []

    def _urls(self, *names: str) -> list[tuple[Path, str]]:
        found: list[tuple[Path, str]] = []
        for name in names:
            value = getattr(self, name)
            if value is not None:
                found.append(((name,), value))
        return found


_SOCIAL_URLS: Final = ("issuer", "jwks_url", "authorize_url", "token_url", "userinfo_url")


class OidcProvider(ProviderBase):
    """Any OpenID Connect provider, by its issuer (discovery)."""

    kind: Literal["oidc"]
    issuer: SecureUrl
    client_id: NonEmptyStr
    client_secret: SecretStr | None = None
    scopes: Annotated[tuple[NonEmptyStr, ...], AfterValidator(_scopes)] = ("openid",)
    audiences: tuple[NonEmptyStr, ...] = Field(default=(), min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _audiences_default_to_client_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "audiences" not in data and "client_id" in data:
            return {**data, "audiences": [data["client_id"]]}
        return data

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls("issuer")


class GoogleProvider(ProviderBase):
    """Sign in with Google: id tokens for any of ``client_ids``."""

    kind: Literal["google"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    issuer: SecureUrl = "https://accounts.google.com"
    jwks_url: SecureUrl = "https://www.googleapis.com/oauth2/v3/certs"
    authorize_url: SecureUrl = "https://accounts.google.com/o/oauth2/v2/auth"
    token_url: SecureUrl = "https://oauth2.googleapis.com/token"  # noqa: S105
    userinfo_url: SecureUrl | None = "https://openidconnect.googleapis.com/v1/userinfo"

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls(*_SOCIAL_URLS)


class AppleProvider(ProviderBase):
    """Sign in with Apple; ``team_id``/``key_id``/``private_key`` sign the redirect login's
    client secret."""

    kind: Literal["apple"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    team_id: NonEmptyStr | None = None
    key_id: NonEmptyStr | None = None
    private_key: SecretStr | None = None
    issuer: SecureUrl = "https://appleid.apple.com"
    jwks_url: SecureUrl = "https://appleid.apple.com/auth/keys"
    authorize_url: SecureUrl = "https://appleid.apple.com/auth/authorize"
    token_url: SecureUrl = "https://appleid.apple.com/auth/token"  # noqa: S105
    userinfo_url: SecureUrl | None = None

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls(*_SOCIAL_URLS)


class FacebookProvider(ProviderBase):
    """Facebook Login: access tokens inspected at ``debug_token_url``; Limited Login id
    tokens verified against ``jwks_url``."""

    kind: Literal["facebook"]
    app_id: NonEmptyStr
    app_secret: SecretStr
    debug_token_url: SecureUrl = "https://graph.facebook.com/debug_token"  # noqa: S105
    issuer: SecureUrl = "https://www.facebook.com"
    jwks_url: SecureUrl = "https://limited.facebook.com/.well-known/oauth/openid/jwks/"
    authorize_url: SecureUrl = "https://www.facebook.com/dialog/oauth"
    token_url: SecureUrl = "https://graph.facebook.com/oauth/access_token"  # noqa: S105
    userinfo_url: SecureUrl | None = "https://graph.facebook.com/me"

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls(*_SOCIAL_URLS, "debug_token_url")


class AmazonProvider(ProviderBase):
    """Login with Amazon: access tokens inspected at ``tokeninfo_url``."""

    _nonce_capable: ClassVar[bool] = False

    kind: Literal["amazon"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    tokeninfo_url: SecureUrl = "https://api.amazon.com/auth/o2/tokeninfo"
    issuer: SecureUrl = "https://www.amazon.com"
    jwks_url: SecureUrl | None = None
    authorize_url: SecureUrl = "https://www.amazon.com/ap/oa"
    token_url: SecureUrl = "https://api.amazon.com/auth/o2/token"  # noqa: S105
    userinfo_url: SecureUrl | None = "https://api.amazon.com/user/profile"

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls(*_SOCIAL_URLS, "tokeninfo_url")


class CognitoUserPoolProvider(ProviderBase):
    """A Cognito user pool's id tokens.  Issuer and JWKS derive from ``user_pool_id``; the
    redirect endpoints, when unset, come from the issuer's discovery document."""

    kind: Literal["cognito_user_pool"]
    user_pool_id: Annotated[
        str,
        AfterValidator(_pattern(_USER_POOL_ID, "{value!r} is not a user pool id (REGION_ID)")),
    ]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    issuer: SecureUrl
    jwks_url: SecureUrl
    authorize_url: SecureUrl | None = None
    token_url: SecureUrl | None = None
    userinfo_url: SecureUrl | None = None

    @model_validator(mode="before")
    @classmethod
    def _urls_from_pool(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("user_pool_id"), str):
            return data
        pool = data["user_pool_id"]
        match = _USER_POOL_ID.fullmatch(pool)
        # An invalid pool id is reported on its own key; the URLs then stay a valid filler.
        region, pool = (match[1], pool) if match else ("us-east-1", "invalid")
        issuer = data.get("issuer", f"https://cognito-idp.{region}.amazonaws.com/{pool}")
        filled = {"issuer": issuer}
        if "jwks_url" not in data and isinstance(issuer, str):
            filled["jwks_url"] = issuer.rstrip("/") + "/.well-known/jwks.json"
        return {**data, **filled}

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls(*_SOCIAL_URLS)


class SamlProvider(ProviderBase):
    """A SAML 2.0 IdP, by its metadata (file or URL)."""

    default_user_id: ClassVar[str] = "{name_id}"
    _nonce_capable: ClassVar[bool] = False

    kind: Literal["saml"]
    idp_metadata_file: NonEmptyStr | None = None
    idp_metadata_url: SecureUrl | None = None
    sp_entity_id: NonEmptyStr
    sp_key: SecretStr | None = None
    sp_cert: NonEmptyStr | None = None
    allow_idp_initiated: bool = False

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self._urls("idp_metadata_url")


class InviteConfig(_Frozen):
    """Signed guest invites: a JWT from ``issuer`` for ``audience``, verified with the
    keys at ``jwks_url`` or with ``shared_secret`` (HS256)."""

    issuer: NonEmptyStr
    audience: NonEmptyStr
    jwks_url: SecureUrl | None = None
    shared_secret: SecretStr | None = None


class GuestProvider(ProviderBase):
    """Meeting guests: no IdP; optionally a signed invite."""

    default_user_id: ClassVar[str] = "guest-{random}"
    _nonce_capable: ClassVar[bool] = False

    kind: Literal["guest"]
    invite: InviteConfig | None = None
    allow_open_guests: bool = False
    credential_ttl: int = Field(1800, ge=900, le=43200)
    user_expiration_days: int = Field(1, ge=1, le=5475)

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        if self.invite is not None and self.invite.jwks_url is not None:
            return [(("invite", "jwks_url"), self.invite.jwks_url)]
        return []


ProviderConfig: TypeAlias = Annotated[
    OidcProvider
    | GoogleProvider
    | AppleProvider
    | FacebookProvider
    | AmazonProvider
    | CognitoUserPoolProvider
    | SamlProvider
    | GuestProvider,
    Field(discriminator="kind"),
]

PROVIDER_KINDS: Final[dict[str, type[ProviderBase]]] = {
    "oidc": OidcProvider,
    "google": GoogleProvider,
    "apple": AppleProvider,
    "facebook": FacebookProvider,
    "amazon": AmazonProvider,
    "cognito_user_pool": CognitoUserPoolProvider,
    "saml": SamlProvider,
    "guest": GuestProvider,
}

_PROVIDER_ADAPTER: Final[TypeAdapter[ProviderConfig]] = TypeAdapter(ProviderConfig)
_MODE_ADAPTER: Final[TypeAdapter[str]] = TypeAdapter(Literal["production", "demo"])
_STORE_ADAPTER: Final[TypeAdapter[str]] = TypeAdapter(StoreUrl)
DEFAULT_STORE: Final = "sqlite:///broker-state.db"


class BrokerConfig(_Frozen):
    """The whole, validated configuration.  Build it with ``load_config``, ``parse_config``
    or ``build_config``; validating it directly also runs every cross-field rule."""

    mode: Literal["production", "demo"] = "production"
    aws: AwsConfig
    chime: ChimeConfig
    service: ServiceConfig
    store: StoreUrl = DEFAULT_STORE
    providers: tuple[ProviderConfig, ...] = Field(min_length=1)

    _by_name: dict[str, ProviderConfig] = PrivateAttr(default_factory=dict)
    _namespaces: dict[str, str] = PrivateAttr(default_factory=dict)
    _foreign: dict[str, tuple[tuple[str, str], ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> BrokerConfig:
        problems: list[str] = []
        check_rules(
            lambda path, message: problems.append(f"{format_path(path)}: {message}"),
            mode=self.mode,
            aws=self.aws,
            chime=self.chime,
            service=self.service,
            store=self.store,
            providers=list(enumerate(self.providers)),
        )
        if problems:
            raise ValueError("; ".join(problems))
        self._by_name = {p.name: p for p in self.providers}
        self._namespaces = {p.name: p.user_id_template.literal_prefix for p in self.providers}
        for p in self.providers:
            if p.user_id_template.literal_prefix:
                continue
            self._foreign[p.name] = tuple(
                (q.user_id_template.literal_prefix.lower(), q.name)
                for q in self.providers
                if q is not p
                and q.user_id_template.literal_prefix
                and not (p.allow_shared_user_ids and q.allow_shared_user_ids)
            )
        return self

    @property
    def is_demo(self) -> bool:
        """Whether this is the embedded demo (loopback only, in-process AWS and IdP)."""
        return self.mode == "demo"

    @property
    def store_scheme(self) -> str:
        """``memory``, ``sqlite``, ``redis`` or ``rediss``."""
        return self.store.partition("://")[0]

    def provider(self, name: str) -> ProviderConfig | None:
        """The provider called ``name``, if configured."""
        return self._by_name.get(name)

    def foreign_namespace(self, provider: str, user_id: str) -> str | None:
        """The other provider whose user-id prefix ``user_id`` falls into, if any.

        Only a provider without a prefix can produce such ids; comparison ignores case.
        """
        folded = user_id.lower()
        for prefix, owner in self._foreign.get(provider, ()):
            if folded.startswith(prefix):
                return owner
        return None

    def summary(self) -> str:
        """A few lines for ``chime-broker check``: mode, region, store, providers."""
        lines = [
            f"mode: {self.mode}",
            f"region: {self.aws.region}",
            f"store: {self.store_scheme}",
            f"app instance: {self.chime.app_instance_arn}",
            f"providers ({len(self.providers)}):",
        ]
        width = max(len(p.name) for p in self.providers)
        for p in self.providers:
            lines.append(
                f"  {p.name:<{width}}  kind {p.kind}, exchange {p.exchange}, "
                f"user id {p.user_id_template.source}"
            )
        return "\n".join(lines)


def user_id_namespaces(config: BrokerConfig) -> dict[str, str]:
    """Each provider's user-id prefix (``''`` for the one provider without a prefix)."""
    return dict(config._namespaces)


# -- cross-field rules -------------------------------------------------------------------


def format_path(path: Path) -> str:
    """``('providers', 1, 'map', 'user_id')`` -> ``providers[1].map.user_id``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


_Add = Callable[[Path, str], None]


def check_rules(
    add: _Add,
    *,
    mode: str | None,
    aws: AwsConfig | None,
    chime: ChimeConfig | None,
    service: ServiceConfig | None,
    store: str | None,
    providers: Sequence[tuple[int, ProviderConfig]],
) -> None:
    """Report, through ``add(path, message)``, every broken rule that spans keys.

    Any section may be ``None`` (it failed validation); rules that need it are skipped.
    """
    if aws is not None:
        if chime is not None and chime.region != aws.region:
            add(
                ("chime", "app_instance_arn"),
                f"the app instance is in {chime.region} but aws.region is {aws.region}",
            )
        if aws.cognito is not None and aws.cognito.region != aws.region:
            add(
                ("aws", "cognito", "identity_pool_id"),
                f"the pool is in {aws.cognito.region} but aws.region is {aws.region}",
            )
    if service is not None:
        _check_service(add, mode, service)
    if mode == "demo" and store is not None and store.startswith(("redis://", "rediss://")):
        if not is_loopback_url(store):
            add(("store",), "mode demo uses loopback hosts only")
    for index, provider in providers:
        _check_provider(add, ("providers", index), provider, mode, aws, chime)
    _check_names_and_namespaces(add, providers)


def _check_service(add: _Add, mode: str | None, service: ServiceConfig) -> None:
    if mode == "production":
        if service.secret_key is None:
            add(
                ("service", "secret_key"),
                f"required outside mode demo (at least {MIN_SECRET_KEY_LENGTH} characters)",
            )
        elif len(service.secret_key.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
            add(
                ("service", "secret_key"),
                f"must be at least {MIN_SECRET_KEY_LENGTH} characters",
            )
    if mode == "demo" and not is_loopback_url(service.public_url):
        add(("service", "public_url"), "mode demo runs on loopback only: use http://127.0.0.1:PORT")
    default = service.default_return_to
    if default is not None and not service.return_to_allowed(default):
        add(("service", "default_return_to"), "is not covered by service.allowed_return_to")


def _check_provider(
    add: _Add,
    path: Path,
    p: ProviderConfig,
    mode: str | None,
    aws: AwsConfig | None,
    chime: ChimeConfig | None,
) -> None:
    at_user_id = (*path, "map", "user_id")
    guest = isinstance(p, GuestProvider)
    if not guest:
        templates: list[tuple[Path, Template | None]] = [
            (at_user_id, p.user_id_template),
            ((*path, "map", "display_name"), p.display_name_template),
            *(((*path, "map", "tags", key), t) for key, t in p.tag_templates.items()),
        ]
        for where, template in templates:
            if template is not None and template.uses_random:
                add(where, "'{random}' is only available to guest providers")

    _check_user_id(add, at_user_id, p)
    _check_exchange(add, path, p, aws)
    if chime is not None:
        _check_tags(add, path, p, chime)

    if p.require_nonce and not p._nonce_capable:
        add((*path, "require_nonce"), f"a {p.kind} provider has no id token to carry a nonce")
    if mode == "demo":
        for where, url in p.endpoint_urls():
            if not is_loopback_url(url):
                add((*path, *where), "mode demo talks to loopback hosts only")

    if isinstance(p, AppleProvider):
        given = [k for k in ("team_id", "key_id", "private_key") if getattr(p, k) is not None]
        if given and len(given) < 3:
            missing = [k for k in ("team_id", "key_id", "private_key") if k not in given]
            add(
                (*path, missing[0]),
                "team_id, key_id and private_key go together (they sign the client secret)",
            )
    elif isinstance(p, SamlProvider):
        if p.idp_metadata_file is None and p.idp_metadata_url is None:
            add((*path, "idp_metadata_file"), "required (or idp_metadata_url)")
        elif p.idp_metadata_file is not None and p.idp_metadata_url is not None:
            add((*path, "idp_metadata_url"), "set idp_metadata_file or idp_metadata_url, not both")
        if (p.sp_key is None) != (p.sp_cert is None):
            add(
                (*path, "sp_cert" if p.sp_cert is None else "sp_key"),
                "sp_key and sp_cert go together",
            )
    elif isinstance(p, GuestProvider):
        _check_guest(add, path, p, mode)


def _check_guest(add: _Add, path: Path, p: GuestProvider, mode: str | None) -> None:
    if p.invite is not None:
        invite = p.invite
        if (invite.jwks_url is None) == (invite.shared_secret is None):
            add((*path, "invite"), "needs exactly one of jwks_url or shared_secret")
        elif (
            invite.shared_secret is not None
            and len(invite.shared_secret.get_secret_value()) < MIN_SECRET_KEY_LENGTH
        ):
            add(
                (*path, "invite", "shared_secret"),
                f"must be at least {MIN_SECRET_KEY_LENGTH} characters",
            )
    elif mode == "production" and not p.allow_open_guests:
        add((*path, "invite"), "required outside mode demo, unless allow_open_guests: true")
    if p.invite is None and not p.user_id_template.uses_random:
        add(
            (*path, "map", "user_id"),
            "guests without an invite have no verified claims: the user id must use '{random}'",
        )
    if p.exchange != "sts" and "credential_ttl" in p.model_fields_set:
        add(
            (*path, "credential_ttl"),
            "applies to exchange: sts only (Cognito always issues one-hour credentials)",
        )


def _check_user_id(add: _Add, where: Path, p: ProviderConfig) -> None:
    template = p.user_id_template
    shown = template.source
    bad = sorted({ch for literal in template.literals for ch in literal} - _USER_ID_CHARS)
    prefix = template.literal_prefix
    if bad:
        add(
            where,
            f"{shown!r} has {''.join(bad)!r}, which a Chime user id cannot hold "
            "(ASCII letters, digits and : - _ . @ only)",
        )
    elif prefix and not (prefix[0].isascii() and prefix[0].isalnum()):
        add(where, f"{shown!r}: a Chime user id must start with a letter or digit")
    if isinstance(p, GuestProvider) and p.invite is None:
        return  # _check_guest: open guests must use {random}
    if not template.fields and not template.uses_random:
        add(where, f"{shown!r} reads no claim: every user would get the same id")
    elif template.fields and not template.uses_random:
        if all(f in MUTABLE_CLAIMS for f in template.fields):
            add(
                where,
                f"{shown!r} is built only from claims users can change "
                f"({', '.join(template.fields)}); identity is (issuer, sub): use '{{sub}}'",
            )


def _check_exchange(add: _Add, path: Path, p: ProviderConfig, aws: AwsConfig | None) -> None:
    at_exchange = (*path, "exchange")
    if p.exchange == "cognito" and isinstance(p, SamlProvider | GuestProvider):
        what = "SAML providers" if isinstance(p, SamlProvider) else "guest providers"
        add(
            at_exchange,
            f"{what} cannot use exchange: cognito (the identity pool cannot verify them); "
            f"use {_EXCHANGE_HELP}",
        )
    elif p.exchange == "cognito":
        template = p.user_id_template
        if not template.is_bare_claim or "." in template.fields[0]:
            add(
                (*path, "map", "user_id"),
                "with exchange: cognito the identity pool maps the claim to chime.user_tag, "
                "so user_id must be one bare top-level claim such as '{sub}'",
            )
        if p.map.require:
            add(
                (*path, "map", "require"),
                "cannot be enforced with exchange: cognito (any app holding the token can call "
                f"Cognito itself); use {_EXCHANGE_HELP}",
            )
        for key, tag in p.tag_templates.items():
            if not tag.is_bare_claim or "." in tag.fields[0]:
                add(
                    (*path, "map", "tags", key),
                    "with exchange: cognito the identity pool sets the tags: use one bare "
                    "top-level claim such as '{department}'",
                )
    if p.custom_role_arn is not None and p.exchange != "cognito":
        add((*path, "custom_role_arn"), "applies to exchange: cognito only")
    if p.role_arn is not None and p.exchange != "sts":
        add((*path, "role_arn"), "applies to exchange: sts only")
    if aws is None:
        return
    if p.exchange == "cognito" and aws.cognito is None:
        add(at_exchange, "exchange: cognito needs aws.cognito.identity_pool_id")
    elif p.exchange == "cognito_developer":
        if aws.cognito is None:
            add(
                at_exchange,
                "exchange: cognito_developer needs aws.cognito "
                "(identity_pool_id and developer_provider_name)",
            )
        elif aws.cognito.developer_provider_name is None:
            add(
                at_exchange, "exchange: cognito_developer needs aws.cognito.developer_provider_name"
            )
    elif p.exchange == "sts" and p.role_arn is None and aws.sts is None:
        add(at_exchange, "exchange: sts needs a role: set role_arn here or aws.sts.role_arn")


def _check_tags(add: _Add, path: Path, p: ProviderConfig, chime: ChimeConfig) -> None:
    at_tags = (*path, "map", "tags")
    if len(p.tag_templates) + 1 > MAX_TAGS:
        add(
            at_tags,
            f"{len(p.tag_templates)} tags plus chime.user_tag is more than the {MAX_TAGS} "
            "STS allows",
        )
    seen = {chime.user_tag.casefold(): "chime.user_tag"}
    for key, template in p.tag_templates.items():
        where = (*at_tags, key)
        problem = _tag_key_problem(key)
        if problem:
            add(where, problem)
            continue
        earlier = seen.get(key.casefold())
        if earlier == "chime.user_tag":
            add(where, "is chime.user_tag, which the broker sets to the user id")
            continue
        if earlier is not None:
            add(where, f"differs from tag key {earlier!r} only in case; STS treats them as one")
            continue
        seen[key.casefold()] = key
        if not template.fields and not template.uses_random:
            value = template.render({}, provider=p.name)
            if not is_tag_value(value):
                add(
                    where,
                    f"{value!r} is not a valid STS tag value ({_TAG_CHARS_HELP}; "
                    f"at most {TAG_VALUE_MAX_LENGTH} characters)",
                )
            continue
        for literal in template.literals:
            if not is_tag_text(literal):
                add(
                    where,
                    f"the text {literal!r} is not allowed in an STS tag value ({_TAG_CHARS_HELP})",
                )
                break


_SHARE_HELP: Final = "set allow_shared_user_ids on both to share ids deliberately"


def _check_names_and_namespaces(add: _Add, providers: Sequence[tuple[int, ProviderConfig]]) -> None:
    first: dict[str, int] = {}
    for index, p in providers:
        if p.name in first:
            add(
                ("providers", index, "name"),
                f"{p.name!r} is already the name of providers[{first[p.name]}]",
            )
        else:
            first[p.name] = index
    for j, (index, p) in enumerate(providers):
        mine = p.user_id_template.literal_prefix
        for _, q in providers[:j]:
            if p.allow_shared_user_ids and q.allow_shared_user_ids:
                continue
            theirs = q.user_id_template.literal_prefix
            where = ("providers", index, "map", "user_id")
            if not mine and not theirs:
                add(
                    where,
                    f"has no user id prefix, like provider {q.name!r}: at most one provider may "
                    f"go without one ({_SHARE_HELP})",
                )
            elif (
                mine
                and theirs
                and (
                    mine.lower().startswith(theirs.lower())
                    or theirs.lower().startswith(mine.lower())
                )
            ):
                add(
                    where,
                    f"user id prefix {mine!r} overlaps {theirs!r}, the prefix of provider "
                    f"{q.name!r}: prefixes must be distinct and none may start another "
                    f"({_SHARE_HELP})",
                )


# -- YAML with line numbers --------------------------------------------------------------


class _LineMapping(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key."""

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[Any, int] = {}


class _LineSequence(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self) -> None:
        super().__init__()
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """``SafeLoader`` that records where keys and items are, refuses duplicate keys and
    names unsupported tags plainly (it never constructs Python objects)."""


def _construct_undefined(loader: _LineLoader, node: yaml.Node) -> Any:
    tag = node.tag
    if tag.startswith("tag:yaml.org,2002:"):
        tag = "!!" + tag.removeprefix("tag:yaml.org,2002:")
    raise yaml.constructor.ConstructorError(
        None, None, f"unsupported YAML tag {tag!r}", node.start_mark
    )


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[_LineMapping]:
    data = _LineMapping()
    yield data
    own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged = len(node.value) - own
    own_keys: set[Any] = set()
    for position, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if position >= merged:
            if key in own_keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            own_keys.add(key)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> Iterator[_LineSequence]:
    data = _LineSequence()
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_LineLoader.add_constructor(None, _construct_undefined)


def _read_yaml(text: str, source: str) -> Any:
    loader = _LineLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f"{source} (line {mark.line + 1})" if mark is not None else source
        raise ConfigError([f"{where}: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    finally:
        loader.dispose()


# -- problems, interpolation, validation ---------------------------------------------------


class _Report:
    """Collects problems with their paths; formats them with line numbers at the end."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path, int] = {}
        self.interpolated: set[Path] = set()
        self.problems: list[tuple[Path, str]] = []
        self.unresolved: set[Path] = set()

    def add(self, path: Path, message: str) -> None:
        # A value whose ${env:...} could not be resolved has no other problem worth naming.
        if not any(path[:end] in self.unresolved for end in range(len(path), 0, -1)):
            self.problems.append((path, message))

    def add_unresolved(self, path: Path, message: str) -> None:
        self.problems.append((path, message))
        self.unresolved.add(path)

    def _line(self, path: Path) -> int | None:
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def formatted(self) -> list[str]:
        entries: list[tuple[int, str]] = []
        for path, message in self.problems:
            line = self._line(path)
            where = format_path(path) or self.source
            if line is not None:
                where += f" (line {line})"
            entries.append((line if line is not None else 1 << 30, f"{where}: {message}"))
        entries.sort(key=lambda entry: entry[0])
        return [text for _, text in entries]

    def error(self) -> ConfigError:
        return ConfigError(self.formatted())


_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME: Final = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
_MAX_NODES: Final = 100_000


class _Preparer:
    """Copies parsed YAML into plain dicts/lists, recording lines and interpolating
    ``${env:NAME}`` (``$${`` is a literal ``${``)."""

    def __init__(self, report: _Report, env: Mapping[str, str]) -> None:
        self.report = report
        self.env = env
        self.nodes = 0

    def prepare(self, value: Any, path: Path) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ConfigError([f"{self.report.source}: the configuration is too large"])
        if isinstance(value, dict):
            key_lines: dict[Any, int] = getattr(value, "key_lines", {})
            mapping: dict[str, Any] = {}
            for key, item in value.items():
                child: Path = (*path, str(key))
                if key in key_lines:
                    self.report.lines[child] = key_lines[key]
                if not isinstance(key, str):
                    self.report.add(child, f"key {key!r} is not a string: quote it")
                    continue
                mapping[key] = self.prepare(item, child)
            return mapping
        if isinstance(value, list):
            item_lines: list[int] = getattr(value, "item_lines", [])
            sequence: list[Any] = []
            for index, item in enumerate(value):
                child = (*path, index)
                if index < len(item_lines):
                    self.report.lines[child] = item_lines[index]
                sequence.append(self.prepare(item, child))
            return sequence
        if isinstance(value, str) and "${" in value:
            return self._interpolate(value, path)
        return value

    def _interpolate(self, text: str, path: Path) -> str:
        def replace(match: re.Match[str]) -> str:
            whole = match[0]
            if whole == "$${":
                return "${"
            reference = match[1]
            name = _ENV_NAME.fullmatch(reference) if reference is not None else None
            if name is None:
                self.report.add_unresolved(
                    path,
                    f"{whole!r} is not a reference: write ${{env:NAME}} "
                    "(or $${ for a literal ${)",
                )
                return whole
            value = self.env.get(name[1])
            if value is None:
                self.report.add_unresolved(path, f"environment variable {name[1]!r} is not set")
                return ""
            self.report.interpolated.add(path)
            return value

        return _REFERENCE.sub(replace, text)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "…")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


_EXPECTED: Final = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pydantic_message(error: Mapping[str, Any], shown: bool) -> str:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    got = f", got {_describe(error.get('input'))}" if shown else ""
    if kind == "missing":
        return "required"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}{got}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx['le'])}"
    if kind == "greater_than":
        return f"must be more than {_number(ctx['gt'])}"
    if kind == "less_than":
        return f"must be less than {_number(ctx['lt'])}"
    if kind in ("string_too_short", "too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        unit = "characters" if kind == "string_too_short" else "items"
        return f"needs at least {ctx.get('min_length')} {unit}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"may have at most {ctx.get('max_length')} items"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r}; expected one of {', '.join(PROVIDER_KINDS)}"
    if kind == "union_tag_not_found":
        return "required"
    return str(error["msg"])


def _model_at(model: type[BaseModel], relative: Path) -> type[BaseModel] | None:
    """The model class at ``relative`` inside ``model`` (list indices skipped)."""
    current: type[BaseModel] | None = model
    for part in relative:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        current = None
        if field is None:
            return None
        stack = [field.annotation]
        while stack:
            candidate = stack.pop()
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
            stack.extend(get_args(candidate))
    return current


def _unknown_key(key: str | int, allowed: Sequence[str], where: str = "") -> str:
    message = f"unknown key{where}"
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message


def _validate_piece(
    report: _Report,
    path: Path,
    validate: Callable[[Any], Any],
    value: Any,
    model: type[BaseModel] | None,
    strip_tag: str | None = None,
) -> Any:
    """``validate(value)``, or ``None`` with every error added to ``report``."""
    try:
        return validate(value)
    except ValidationError as exc:
        for error in exc.errors():
            loc: Path = tuple(error["loc"])
            if strip_tag is not None and loc[:1] == (strip_tag,):
                loc = loc[1:]
            loc = tuple(part for part in loc if part != "[key]")
            full = (*path, *loc)
            kind = error["type"]
            if kind in ("union_tag_invalid", "union_tag_not_found"):
                full = (*path, "kind")
            if kind == "extra_forbidden" and loc:
                parent = _model_at(model, loc[:-1]) if model is not None else None
                allowed = list(parent.model_fields) if parent is not None else []
                where = f" for kind {strip_tag!r}" if strip_tag and len(loc) == 1 else ""
                report.add(full, _unknown_key(loc[-1], allowed, where))
                continue
            report.add(full, _pydantic_message(error, full not in report.interpolated))
        return None


_SECTIONS: Final[tuple[tuple[str, type[BaseModel]], ...]] = (
    ("aws", AwsConfig),
    ("chime", ChimeConfig),
    ("service", ServiceConfig),
)


def _validate(raw: Any, report: _Report) -> BrokerConfig:
    if not isinstance(raw, dict):
        report.add((), "the configuration must be a mapping of keys to values")
        raise report.error()
    for key in raw:
        if key not in BrokerConfig.model_fields:
            report.add((key,), _unknown_key(key, list(BrokerConfig.model_fields)))

    mode = _validate_piece(
        report, ("mode",), _MODE_ADAPTER.validate_python, raw.get("mode", "production"), None
    )
    sections: dict[str, Any] = {}
    for name, model in _SECTIONS:
        if name not in raw:
            report.add((name,), "required")
            sections[name] = None
        else:
            sections[name] = _validate_piece(
                report, (name,), model.model_validate, raw[name], model
            )
    store = _validate_piece(
        report, ("store",), _STORE_ADAPTER.validate_python, raw.get("store", DEFAULT_STORE), None
    )

    providers: list[tuple[int, ProviderConfig]] = []
    raw_providers = raw.get("providers")
    if "providers" not in raw:
        report.add(("providers",), "required")
    elif not isinstance(raw_providers, list):
        report.add(("providers",), f"expected a list, got {_describe(raw_providers)}")
    elif not raw_providers:
        report.add(("providers",), "lists no provider: a broker without providers signs nobody in")
    else:
        for index, item in enumerate(raw_providers):
            kind = item.get("kind") if isinstance(item, dict) else None
            provider_model = PROVIDER_KINDS.get(kind) if isinstance(kind, str) else None
            validated = _validate_piece(
                report,
                ("providers", index),
                _PROVIDER_ADAPTER.validate_python,
                item,
                provider_model,
                strip_tag=kind if provider_model is not None else None,
            )
            if validated is not None:
                providers.append((index, validated))

    check_rules(
        report.add,
        mode=mode,
        aws=sections["aws"],
        chime=sections["chime"],
        service=sections["service"],
        store=store,
        providers=providers,
    )
    if report.problems:
        raise report.error()
    return BrokerConfig.model_validate(
        {
            "mode": mode,
            **sections,
            "store": store,
            "providers": tuple(provider for _, provider in providers),
        }
    )


def build_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> BrokerConfig:
    """Validate a Python mapping shaped like the YAML file (``${env:NAME}`` included).

    Raises ``ConfigError`` listing every problem with its key path.
    """
    report = _Report(source)
    preparer = _Preparer(report, os.environ if env is None else env)
    raw = preparer.prepare(dict(data) if isinstance(data, Mapping) else data, ())
    return _validate(raw, report)


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Parse and validate YAML ``text``; ``env`` (default ``os.environ``) feeds
    ``${env:NAME}``.

    Raises ``ConfigError`` listing every problem as ``path (line N): message``.
    """
    document = _read_yaml(text, source)
    report = _Report(source)
    preparer = _Preparer(report, os.environ if env is None else env)
    raw = preparer.prepare(document, ())
    return _validate(raw, report)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BrokerConfig:
    """Read, parse and validate the YAML file at ``path``.

    Raises ``ConfigError`` listing every problem (a file that cannot be read is one).
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError([f"{os.fspath(path)}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{os.fspath(path)}: is not UTF-8 text"]) from None
    return parse_config(text, source=os.fspath(path), env=env)
