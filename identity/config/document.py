"""The whole configuration document: ``BrokerConfig`` and how it is read.

``load_config`` / ``parse_config`` read YAML, ``build_config`` takes a Python mapping
shaped like it (tests); all three resolve ``${…}`` references, validate the document once
and raise ``ConfigError`` listing every problem as ``path (line N): message``. Each
provider entry is validated by the model of its ``kind`` from ``identity.providers.kinds``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from identity.config.aws_secrets import aws_document_resolvers
from identity.config.models import (
    SHORT_CREDENTIALS,
    SHORT_CREDENTIALS_WARNING,
    AwsConfig,
    ChimeConfig,
    Frozen,
    Problem,
    ProviderBase,
    ServiceConfig,
    ValidationContext,
    context_of,
    raise_problems,
)
from identity.config.report import Path, Report, format_path, model_at
from identity.config.source import Preparer, References, env_resolver, read_yaml
from identity.config.types import StoreUrl, is_loopback_url
from identity.errors import ConfigError
from identity.providers.kinds import KINDS

DEFAULT_STORE: Final = "sqlite:///broker-state.db"
_SHARE_HELP: Final = "set allow_shared_user_ids on both to share ids deliberately"


def _namespace_problems(entry: ProviderBase, earlier: Sequence[ProviderBase]) -> list[Problem]:
    """Names are unique; user-id prefixes are distinct and none starts another; at most
    one provider goes without a prefix (unless both allow shared ids)."""
    problems: list[Problem] = []
    for index, other in enumerate(earlier):
        if other.name == entry.name:
            problems.append(
                (("name",), f"{entry.name!r} is already the name of providers[{index}]")
            )
            break
    mine = entry.user_id_template.literal_prefix
    for other in earlier:
        if entry.allow_shared_user_ids and other.allow_shared_user_ids:
            continue
        theirs = other.user_id_template.literal_prefix
        where: Path = ("map", "user_id")
        if not mine and not theirs:
            problems.append(
                (
                    where,
                    f"has no user id prefix, like provider {other.name!r}: at most one provider "
                    f"may go without one ({_SHARE_HELP})",
                )
            )
        elif (
            mine
            and theirs
            and (mine.lower().startswith(theirs.lower()) or theirs.lower().startswith(mine.lower()))
        ):
            problems.append(
                (
                    where,
                    f"user id prefix {mine!r} overlaps {theirs!r}, the prefix of provider "
                    f"{other.name!r}: prefixes must be distinct and none may start another "
                    f"({_SHARE_HELP})",
                )
            )
    return problems


def _provider_entry(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """One ``providers`` item: validated by its kind's model, then checked against the
    entries before it."""
    if isinstance(value, ProviderBase):
        return value
    kind = value.get("kind") if isinstance(value, dict) else None
    if not isinstance(value, dict):
        raise_problems("provider", [((), "expected a mapping")], value)
    elif kind is None:
        raise_problems("provider", [(("kind",), "required")], value)
    elif not isinstance(kind, str) or kind not in KINDS:
        raise_problems(
            "provider",
            [(("kind",), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")],
            value,
        )
    assert isinstance(kind, str)  # every other case raised above
    context = context_of(info)
    entry = KINDS[kind].model.model_validate(value, context=context)
    earlier = list(context.providers)
    context.providers.append(entry)
    raise_problems("provider", _namespace_problems(entry, earlier), value)
    return entry


ProviderEntry = Annotated[ProviderBase, WrapValidator(_provider_entry)]


class BrokerConfig(Frozen):
    """The whole, validated configuration.  Build it with ``load_config``, ``parse_config``
    or ``build_config``."""

    mode: Literal["production", "demo"] = "production"
    aws: AwsConfig
    chime: ChimeConfig
    service: ServiceConfig
    store: StoreUrl = DEFAULT_STORE
    providers: tuple[ProviderEntry, ...]

    _by_name: dict[str, ProviderBase] = PrivateAttr(default_factory=dict)
    _report: Report | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _with_context(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Self:
        # Rules of later sections read earlier ones from the context: make sure there is one.
        if not isinstance(info.context, ValidationContext) and not isinstance(data, cls):
            return cls.model_validate(data, context=ValidationContext())
        validated: Self = handler(data)
        return validated

    @field_validator("mode")
    @classmethod
    def _record_mode(cls, value: str, info: ValidationInfo) -> str:
        context_of(info).mode = value
        return value

    @field_validator("store")
    @classmethod
    def _demo_store(cls, value: str, info: ValidationInfo) -> str:
        if (
            context_of(info).mode == "demo"
            and value.startswith(("redis://", "rediss://"))
            and not is_loopback_url(value)
        ):
            raise ValueError("mode demo uses loopback hosts only")
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _some_providers(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and not value:
            raise ValueError("lists no provider: a broker without providers signs nobody in")
        return value

    @model_validator(mode="after")
    def _index(self) -> Self:
        self._by_name = {p.name: p for p in self.providers}
        return self

    @property
    def is_demo(self) -> bool:
        """Whether this is the embedded demo (loopback only, in-process AWS and IdP)."""
        return self.mode == "demo"

    @property
    def store_scheme(self) -> str:
        """``memory``, ``sqlite``, ``redis`` or ``rediss``."""
        return self.store.partition("://")[0]

    def provider(self, name: str) -> ProviderBase | None:
        """The provider called ``name``, if configured."""
        return self._by_name.get(name)

    def role_arn(self, provider: ProviderBase) -> str | None:
        """The role ``provider``'s credentials act as, where the config names it: its own
        ``role_arn`` (``exchange: sts``) or ``custom_role_arn`` (``exchange: cognito``),
        else the exchange's default role; None when the identity pool picks it."""
        if provider.exchange == "sts":
            return provider.role_arn or (self.aws.sts.role_arn if self.aws.sts else None)
        return provider.custom_role_arn or (self.aws.cognito.role_arn if self.aws.cognito else None)

    def report_problems(self, problems: Sequence[Problem]) -> list[str]:
        """``problems`` found after validation (building a provider, opening the store),
        formatted like the validation report, with the YAML lines of their keys; problems
        of values that are placeholders (``check --offline``) are left out."""
        report = Report(
            self._report.source if self._report is not None else "<config>",
            self._report.lines if self._report is not None else None,
            self._report.placeholders if self._report is not None else None,
        )
        for path, message in problems:
            report.add(path, message)
        return report.formatted()

    @property
    def placeholders(self) -> list[str]:
        """The key paths whose ``${…}`` reference was left as a placeholder."""
        held = self._report.placeholders if self._report is not None else set()
        return sorted(format_path(path) for path in held)

    def warnings(self) -> list[tuple[Path, str]]:
        """What works but is likely not what was meant, outside the providers (``check``
        prints them with the providers' own)."""
        found: list[tuple[Path, str]] = []
        sts = self.aws.sts
        if (
            sts is not None
            and sts.duration_seconds < SHORT_CREDENTIALS
            and any(p.exchange == "sts" for p in self.providers)
        ):
            found.append((("aws", "sts", "duration_seconds"), SHORT_CREDENTIALS_WARNING))
        for index, provider in enumerate(self.providers):
            found += [(("providers", index, *where), msg) for where, msg in provider.warnings()]
        return found

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


def _report_errors(report: Report, raw: Mapping[str, Any], exc: ValidationError) -> None:
    providers = raw.get("providers")
    for error in exc.errors():
        loc: Path = tuple(part for part in error["loc"] if part != "[key]")
        model: type[Any] | None = BrokerConfig
        relative = loc[:-1]
        where = ""
        if loc[:1] == ("providers",) and len(loc) >= 2 and isinstance(loc[1], int):
            item = providers[loc[1]] if isinstance(providers, list) else None
            kind = item.get("kind") if isinstance(item, dict) else None
            model = KINDS[kind].model if isinstance(kind, str) and kind in KINDS else None
            relative = loc[2:-1]
            if len(loc) == 3 and kind is not None:
                where = f" for kind {kind!r}"
        parent = model_at(model, relative) if model is not None else None
        report.add_pydantic(loc, error, parent, kinds=list(KINDS), where=where)


def _validate(raw: Any, report: Report) -> BrokerConfig:
    if not isinstance(raw, dict):
        report.add((), "the configuration must be a mapping of keys to values")
        raise report.error()
    try:
        config = BrokerConfig.model_validate(raw, context=ValidationContext())
    except ValidationError as exc:
        _report_errors(report, raw, exc)
        raise report.error() from None
    if report.problems:
        raise report.error()
    config._report = report
    return config


def default_references(
    env: Mapping[str, str] | None = None, *, placeholders: bool = False
) -> References:
    """The references every load of a config accepts: ``${env:NAME}`` from ``env``
    (default ``os.environ``), ``${ssm:…}`` and ``${secretsmanager:…}``; with
    ``placeholders`` (``check --offline``) unresolved ones stand in as placeholders and
    nothing is read from AWS."""
    return References(
        {"env": env_resolver(os.environ if env is None else env)},
        placeholders=placeholders,
        document_resolvers=aws_document_resolvers(),
    )


def build_config(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    references: References | None = None,
) -> BrokerConfig:
    """Validate a Python mapping shaped like the YAML file (``${env:NAME}`` included).

    Raises ``ConfigError`` listing every problem with its key path.
    """
    report = Report(source)
    document = dict(data) if isinstance(data, Mapping) else data
    preparer = Preparer(report, (references or default_references(env)).bind(document))
    raw = preparer.prepare(document)
    return _validate(raw, report)


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    references: References | None = None,
) -> BrokerConfig:
    """Parse and validate YAML ``text``; ``env`` (default ``os.environ``) feeds
    ``${env:NAME}``.

    Raises ``ConfigError`` listing every problem as ``path (line N): message``.
    """
    document = read_yaml(text, source)
    report = Report(source)
    preparer = Preparer(report, (references or default_references(env)).bind(document))
    raw = preparer.prepare(document)
    return _validate(raw, report)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    references: References | None = None,
) -> BrokerConfig:
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
    return parse_config(text, source=os.fspath(path), env=env, references=references)
