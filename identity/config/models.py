"""The configuration's section models and the provider base model.

Rules that span keys are validators: they read the sections validated before them (mode,
``aws``, ``chime``) from the validation context, a ``ValidationContext`` that the document
fills in field order. Each rule is checked once per load; every broken rule of one model is
raised together with its key path, so the report lists every problem at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from identity import limits
from identity.config.report import Path
from identity.config.types import (
    APP_INSTANCE_ARN,
    MIN_SECRET_KEY_LENGTH,
    AppInstanceArn,
    ByteSize,
    ClaimName,
    CookieName,
    DeveloperProviderName,
    Duration,
    IdentityPoolId,
    Origin,
    ProviderName,
    PublicUrl,
    Region,
    RequireRule,
    ReturnTo,
    RoleArn,
    TagKey,
    TemplateText,
    in_range,
    is_loopback_url,
    return_to_matches,
    show_bytes,
    show_seconds,
)
from identity.templates import MIN_USER_ID_SHA256, Template, compile_template, is_mutable_claim

Exchange = Literal["cognito", "cognito_developer", "sts"]
EXCHANGE_HELP = "cognito_developer or sts"

Problem = tuple[Path, str]


@dataclass
class ValidationContext:
    """What the sections validated so far tell the rules of later ones."""

    mode: str | None = None
    aws: AwsConfig | None = None
    chime: ChimeConfig | None = None
    providers: list[ProviderBase] = field(default_factory=list)


def context_of(info: ValidationInfo) -> ValidationContext:
    """The document's context, or an empty one (rules that need a section then skip)."""
    context = info.context
    return context if isinstance(context, ValidationContext) else ValidationContext()


def raise_problems(title: str, problems: Iterable[Problem], value: Any) -> None:
    """Raise every problem at once as one ``ValidationError`` with its key paths."""
    details = [
        InitErrorDetails(type=PydanticCustomError("config_rule", message), loc=path, input=value)
        for path, message in problems
    ]
    if details:
        raise ValidationError.from_exception_data(title, details)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


class CognitoConfig(Frozen):
    """The Cognito identity pool used by ``exchange: cognito`` and ``cognito_developer``."""

    identity_pool_id: IdentityPoolId
    developer_provider_name: DeveloperProviderName | None = None
    token_duration: int = Field(300, ge=1, le=86400)
    role_arn: RoleArn | None = None

    @property
    def region(self) -> str:
        """The region the pool lives in, from its id."""
        return self.identity_pool_id.partition(":")[0]


class StsConfig(Frozen):
    """``exchange: sts``: the default user role and how long its sessions last."""

    role_arn: RoleArn
    duration_seconds: int = Field(3600, ge=900, le=43200)


class Timeouts(Frozen):
    """Connect and read timeouts (seconds) for every AWS and identity-provider call, and
    ``total``: one AWS call's deadline, retries included (a retry starts only while a whole
    attempt, connect and read timeouts, still fits in it)."""

    connect: Annotated[float, Field(gt=0, le=60)] = 2.0
    read: Annotated[float, Field(gt=0, le=300)] = 5.0
    total: Annotated[float, Field(gt=0, le=900)] = 10.0


SHORT_CREDENTIALS = 1800
SHORT_CREDENTIALS_WARNING = (
    "credentials shorter than 30 minutes are expensive: AWS SDKs refresh 15 minutes before "
    "expiry and the broker reuses nothing with less than 15 minutes left, so almost every "
    "SDK call comes back for new credentials, each one an AWS call; use 3600"
)


class AwsConfig(Frozen):
    """Where AWS is: region, identity pool, STS role, timeouts.  No keys: the SDK's chain."""

    region: Region
    cognito: CognitoConfig | None = None
    sts: StsConfig | None = None
    timeouts: Timeouts = Timeouts()

    @model_validator(mode="after")
    def _pool_in_region(self, info: ValidationInfo) -> Self:
        context_of(info).aws = self
        if self.cognito is not None and self.cognito.region != self.region:
            raise_problems(
                "aws",
                [
                    (
                        ("cognito", "identity_pool_id"),
                        f"the pool is in {self.cognito.region} but aws.region is {self.region}",
                    )
                ],
                self.cognito.identity_pool_id,
            )
        return self


class ChimeConfig(Frozen):
    """The Chime SDK app instance the users belong to."""

    app_instance_arn: AppInstanceArn
    user_tag: TagKey = "my_applications_user_id"
    provision_users: bool = False
    messaging_endpoint: bool = False

    @model_validator(mode="after")
    def _same_region(self, info: ValidationInfo) -> Self:
        context = context_of(info)
        context.chime = self
        if context.aws is not None and self.region != context.aws.region:
            raise_problems(
                "chime",
                [
                    (
                        ("app_instance_arn",),
                        f"the app instance is in {self.region} but aws.region is "
                        f"{context.aws.region}",
                    )
                ],
                self.app_instance_arn,
            )
        return self

    def _arn_part(self, group: int) -> str:
        match = APP_INSTANCE_ARN.fullmatch(self.app_instance_arn)
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


PLAIN_COOKIE_NAME: Final = "chime_broker_session"
HOST_COOKIE_NAME: Final = f"__Host-{PLAIN_COOKIE_NAME}"
COOKIE_PREFIXES: Final = ("__Host-", "__Secure-")
"""Cookie name prefixes a browser accepts only with ``Secure`` (``__Host-``: also
``Path=/`` and no ``Domain``)."""


class ServiceConfig(Frozen):
    """The HTTP service: public URL, secret, sessions, CORS and return_to allow-lists."""

    public_url: PublicUrl
    secret_key: SecretStr | tuple[SecretStr, ...] | None = None
    session_lifetime: Duration = 8 * 3600
    recheck_interval: Duration = 15 * 60
    cookie_name: CookieName = PLAIN_COOKIE_NAME
    allowed_origins: tuple[Origin, ...] = ()
    allowed_return_to: tuple[ReturnTo, ...] = ()
    default_return_to: str | None = None
    trusted_proxies: int = Field(0, ge=0, le=10)
    max_body: ByteSize = ByteSize(64 * 1024)
    cache_credentials: bool = True

    @model_validator(mode="before")
    @classmethod
    def _cookie_name_defaults_by_scheme(cls, data: Any) -> Any:
        # A __Host- cookie can be set only by this host, over https: no sibling plants one.
        if isinstance(data, dict) and "cookie_name" not in data:
            url = data.get("public_url")
            if isinstance(url, str) and url.lower().startswith("https://"):
                return {**data, "cookie_name": HOST_COOKIE_NAME}
        return data

    @field_validator("session_lifetime")
    @classmethod
    def _lifetime_range(cls, value: int) -> int:
        return in_range(value, 60, 365 * 86400, show_seconds)

    @field_validator("recheck_interval")
    @classmethod
    def _recheck_range(cls, value: int) -> int:
        return in_range(value, 30, 7 * 86400, show_seconds)

    @field_validator("max_body")
    @classmethod
    def _body_range(cls, value: int) -> int:
        return in_range(value, 1024, 16 * 1024 * 1024, show_bytes)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Self:
        mode = context_of(info).mode
        problems: list[Problem] = []
        if mode == "production":
            if self.secret_key is None:
                problems.append(
                    (
                        ("secret_key",),
                        f"required outside mode demo (at least {MIN_SECRET_KEY_LENGTH} characters)",
                    )
                )
            elif isinstance(self.secret_key, tuple):
                if not self.secret_key:
                    problems.append((("secret_key",), "must list at least one key"))
                for index, key in enumerate(self.secret_key):
                    if len(key.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
                        problems.append(
                            (
                                ("secret_key", index),
                                f"must be at least {MIN_SECRET_KEY_LENGTH} characters",
                            )
                        )
            elif len(self.secret_key.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
                problems.append(
                    (("secret_key",), f"must be at least {MIN_SECRET_KEY_LENGTH} characters")
                )
        if mode == "demo" and not is_loopback_url(self.public_url):
            problems.append(
                (("public_url",), "mode demo runs on loopback only: use http://127.0.0.1:PORT")
            )
        if self.cookie_name.startswith(COOKIE_PREFIXES) and not self.public_url.startswith(
            "https://"
        ):
            problems.append(
                (
                    ("cookie_name",),
                    f"{self.cookie_name!r}: browsers keep __Host- and __Secure- cookies only "
                    "from https; public_url is http",
                )
            )
        default = self.default_return_to
        if default is not None and not self.return_to_allowed(default):
            problems.append((("default_return_to",), "is not covered by service.allowed_return_to"))
        raise_problems("service", problems, self.public_url)
        return self

    @property
    def secret_keys(self) -> tuple[str, ...]:
        """The values of ``secret_key``, newest first: the first signs and seals, every one
        verifies and opens. Empty when no key is configured (mode demo)."""
        if self.secret_key is None:
            return ()
        if isinstance(self.secret_key, tuple):
            return tuple(key.get_secret_value() for key in self.secret_key)
        return (self.secret_key.get_secret_value(),)

    @property
    def effective_default_return_to(self) -> str | None:
        """``default_return_to``, else the first allowed ``return_to``, else ``None``."""
        if self.default_return_to is not None:
            return self.default_return_to
        return self.allowed_return_to[0] if self.allowed_return_to else None

    def return_to_allowed(self, url: str, *, native: bool = False) -> bool:
        """Whether ``url`` may be returned to: same scheme and host (exactly) as an entry of
        ``allowed_return_to`` and a path under its path prefix, with no dot segments,
        backslashes or control characters. For a ``native`` login, an entry of exactly
        ``http://127.0.0.1/`` or ``http://[::1]/`` allows that host on any port."""
        return any(
            return_to_matches(entry, url, loopback_any_port=native)
            for entry in self.allowed_return_to
        )


class MapConfig(Frozen):
    """How claims become the user id, display name and extra tags, and who may sign in.

    ``require`` values are a scalar (equality) or ``{any_of: [...]}`` / ``{all_of: [...]}``.
    """

    user_id: TemplateText | None = None
    display_name: TemplateText | None = None
    tags: dict[str, TemplateText] = Field(default_factory=dict)
    require: dict[ClaimName, RequireRule] = Field(default_factory=dict)


class ProviderBase(Frozen):
    """What every identity provider entry has; ``kind`` selects the subclass (one per
    module of ``identity.providers``)."""

    default_user_id: ClassVar[str] = "{sub}"
    # The claim that names an account for good, for messages.
    stable_claim: ClassVar[str] = "sub"
    # False for kinds that have no id token to carry a nonce.
    nonce_capable: ClassVar[bool] = True
    # False for kinds the identity pool cannot verify (SAML, guests).
    pool_can_verify: ClassVar[bool] = True
    # What the kind is called in messages about exchange: cognito.
    described_as: ClassVar[str] = "this provider"

    name: ProviderName
    kind: str
    display_name: str = Field("", min_length=1, max_length=100)
    exchange: Exchange
    role_arn: RoleArn | None = None
    custom_role_arn: RoleArn | None = None
    leeway: int = Field(60, ge=0, le=600)
    require_nonce: bool = False
    map: MapConfig = Field(default_factory=MapConfig)
    allow_shared_user_ids: bool = False
    allow_mutable_user_id: bool = False

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
    def _compile_and_check(self, info: ValidationInfo) -> Self:
        # Syntax was checked field by field; {random} outside guests is one of the rules.
        self._user_id_template = compile_template(
            self.map.user_id or self.default_user_id, allow_random=True
        )
        if self.map.display_name is not None:
            self._display_name_template = compile_template(self.map.display_name, allow_random=True)
        self._tag_templates = {
            key: compile_template(text, allow_random=True) for key, text in self.map.tags.items()
        }
        raise_problems(self.kind, self.problems(context_of(info)), self.name)
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

    def urls(self, *names: str) -> list[tuple[Path, str]]:
        """The set URLs among the keys ``names``, with their key paths."""
        found: list[tuple[Path, str]] = []
        for name in names:
            value = getattr(self, name)
            if value is not None:
                found.append(((name,), value))
        return found

    # -- rules --------------------------------------------------------------------------

    def problems(self, context: ValidationContext) -> list[Problem]:
        """Every broken rule of this entry, with key paths relative to it."""
        problems: list[Problem] = []
        problems += self._random_problems()
        problems += self.user_id_problems()
        problems += self._exchange_problems(context)
        if context.chime is not None:
            problems += self._tag_problems(context.chime)
        if self.require_nonce and not self.nonce_capable:
            problems.append(
                (("require_nonce",), f"a {self.kind} provider has no id token to carry a nonce")
            )
        if context.mode == "demo":
            for where, url in self.endpoint_urls():
                if not is_loopback_url(url):
                    problems.append((where, "mode demo talks to loopback hosts only"))
        problems += self.kind_problems(context)
        return problems

    def kind_problems(self, context: ValidationContext) -> list[Problem]:
        """The rules of one kind; kinds override this."""
        return []

    def warnings(self) -> list[Problem]:
        """What works but is likely not what was meant (``chime-broker check`` prints it;
        nothing refuses it); kinds override this."""
        return []

    def template_claims(self) -> list[tuple[Path, str]]:
        """Every claim ``map`` reads (templates and ``require``), with its key path; the
        first segment of a dotted path (``address.country`` reads ``address``)."""
        read: list[tuple[Path, str]] = []
        templates: list[tuple[Path, Template | None]] = [
            (("map", "user_id"), self.user_id_template),
            (("map", "display_name"), self.display_name_template),
            *((("map", "tags", key), t) for key, t in self.tag_templates.items()),
        ]
        for where, template in templates:
            if template is not None:
                read += [(where, claim.split(".", 1)[0]) for claim in template.fields]
        read += [(("map", "require", claim), claim.split(".", 1)[0]) for claim in self.map.require]
        return read

    def _random_problems(self) -> list[Problem]:
        templates: list[tuple[Path, Template | None]] = [
            (("map", "user_id"), self.user_id_template),
            (("map", "display_name"), self.display_name_template),
            *((("map", "tags", key), t) for key, t in self.tag_templates.items()),
        ]
        return [
            (where, "'{random}' is only available to guest providers")
            for where, template in templates
            if template is not None and template.uses_random
        ]

    def user_id_problems(self) -> list[Problem]:
        """What a Chime user id built by ``map.user_id`` could never be, and whether it
        reads a stable claim."""
        return self.user_id_char_problems() + self._user_id_claim_problems()

    def user_id_char_problems(self) -> list[Problem]:
        """The template's literal text against Chime's user-id characters."""
        template = self.user_id_template
        shown = template.source
        bad = sorted({ch for literal in template.literals for ch in literal} - limits.USER_ID_CHARS)
        prefix = template.literal_prefix
        if bad:
            return [
                (
                    ("map", "user_id"),
                    f"{shown!r} has {''.join(bad)!r}, which a Chime user id cannot hold "
                    f"({limits.USER_ID_CHARS_HELP})",
                )
            ]
        if prefix and not (prefix[0].isascii() and prefix[0].isalnum()):
            return [
                (
                    ("map", "user_id"),
                    f"{shown!r}: a Chime user id must start with a letter or digit",
                )
            ]
        return []

    def _user_id_claim_problems(self) -> list[Problem]:
        template = self.user_id_template
        shown = template.source
        if not template.fields and not template.uses_random:
            return [
                (("map", "user_id"), f"{shown!r} reads no claim: every user would get the same id")
            ]
        if self.allow_mutable_user_id:
            return []
        problems: list[Problem] = []
        mutable = [f for f in template.fields if self.is_mutable_claim(f)]
        if mutable:
            problems.append(
                (
                    ("map", "user_id"),
                    f"{shown!r} reads {', '.join(mutable)}, which users or admins can change; "
                    f"identity is (issuer, {self.stable_claim}): use '{{{self.stable_claim}}}' "
                    "(or allow_mutable_user_id: true when nothing stable exists)",
                )
            )
        if template.lossy_filters:
            problems.append(
                (
                    ("map", "user_id"),
                    f"{shown!r} uses {', '.join(template.lossy_filters)}, which can give two "
                    f"users one id (case folding, or sha256:N with N under {MIN_USER_ID_SHA256})",
                )
            )
        return problems

    def is_mutable_claim(self, claim: str) -> bool:
        """Whether ``map.user_id`` reading ``claim`` would make a user id that can change."""
        return is_mutable_claim(claim)

    def _exchange_problems(self, context: ValidationContext) -> list[Problem]:
        problems: list[Problem] = []
        if self.exchange == "cognito" and not self.pool_can_verify:
            problems.append(
                (
                    ("exchange",),
                    f"{self.described_as} cannot use exchange: cognito (the identity pool "
                    f"cannot verify them); use {EXCHANGE_HELP}",
                )
            )
        elif self.exchange == "cognito":
            problems += self._pool_mapping_problems()
        if self.custom_role_arn is not None and self.exchange != "cognito":
            problems.append((("custom_role_arn",), "applies to exchange: cognito only"))
        if self.role_arn is not None and self.exchange != "sts":
            problems.append((("role_arn",), "applies to exchange: sts only"))
        aws = context.aws
        if aws is None:
            return problems
        if self.exchange == "cognito" and aws.cognito is None:
            problems.append((("exchange",), "exchange: cognito needs aws.cognito.identity_pool_id"))
        elif self.exchange == "cognito_developer":
            if aws.cognito is None:
                problems.append(
                    (
                        ("exchange",),
                        "exchange: cognito_developer needs aws.cognito "
                        "(identity_pool_id and developer_provider_name)",
                    )
                )
            elif aws.cognito.developer_provider_name is None:
                problems.append(
                    (
                        ("exchange",),
                        "exchange: cognito_developer needs aws.cognito.developer_provider_name",
                    )
                )
        elif self.exchange == "sts" and self.role_arn is None and aws.sts is None:
            problems.append(
                (
                    ("exchange",),
                    "exchange: sts needs a role: set role_arn here or aws.sts.role_arn",
                )
            )
        return problems

    def _pool_mapping_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        template = self.user_id_template
        if not template.is_bare_claim or "." in template.fields[0]:
            problems.append(
                (
                    ("map", "user_id"),
                    "with exchange: cognito the identity pool maps the claim to chime.user_tag, "
                    "so user_id must be one bare top-level claim such as '{sub}'",
                )
            )
        if self.map.require:
            problems.append(
                (
                    ("map", "require"),
                    "cannot be enforced with exchange: cognito (any app holding the token can "
                    f"call Cognito itself); use {EXCHANGE_HELP}",
                )
            )
        for key, tag in self.tag_templates.items():
            if not tag.is_bare_claim or "." in tag.fields[0]:
                problems.append(
                    (
                        ("map", "tags", key),
                        "with exchange: cognito the identity pool sets the tags: use one bare "
                        "top-level claim such as '{department}'",
                    )
                )
        return problems

    def _tag_problems(self, chime: ChimeConfig) -> list[Problem]:
        at_tags: Path = ("map", "tags")
        problems: list[Problem] = []
        if len(self.tag_templates) + 1 > limits.MAX_TAGS:
            problems.append(
                (
                    at_tags,
                    f"{len(self.tag_templates)} tags plus chime.user_tag is more than the "
                    f"{limits.MAX_TAGS} STS allows",
                )
            )
        seen = {chime.user_tag.casefold(): "chime.user_tag"}
        for key, template in self.tag_templates.items():
            where: Path = (*at_tags, key)
            problem = limits.tag_key_problem(key)
            if problem:
                problems.append((where, problem))
                continue
            earlier = seen.get(key.casefold())
            if earlier == "chime.user_tag":
                problems.append((where, "is chime.user_tag, which the broker sets to the user id"))
                continue
            if earlier is not None:
                problems.append(
                    (
                        where,
                        f"differs from tag key {earlier!r} only in case; STS treats them as one",
                    )
                )
                continue
            seen[key.casefold()] = key
            if not template.fields and not template.uses_random:
                value = template.render({}, provider=self.name)
                if not limits.is_tag_value(value):
                    problems.append(
                        (
                            where,
                            f"{value!r} is not a valid STS tag value ({limits.TAG_CHARS_HELP}; "
                            f"at most {limits.TAG_VALUE_MAX_LENGTH} characters)",
                        )
                    )
                continue
            for literal in template.literals:
                if not limits.is_tag_text(literal):
                    problems.append(
                        (
                            where,
                            f"the text {literal!r} is not allowed in an STS tag value "
                            f"({limits.TAG_CHARS_HELP})",
                        )
                    )
                    break
        return problems
