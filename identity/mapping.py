"""Claims -> Chime app instance user id, display name, principal tags; claim rules.

Everything here is built once at start-up (``build_mappers``) and is pure on the hot path:
``ClaimMapper.map`` evaluates precompiled require rules, renders precompiled templates and
validates what they produce.  A value that is not a valid user id or tag is refused, never
truncated or rewritten into another value; only display names, which identify nobody, are
cleaned and shortened.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from identity.config.models import ProviderBase
from identity.errors import AccessDenied, ConfigError, InternalError, UnmappableIdentity
from identity.limits import (
    DISPLAY_NAME_MAX_LENGTH,
    MAX_TAGS,
    TAG_KEY_MAX_LENGTH,
    TAG_VALUE_MAX_LENGTH,
    USER_ID_CHARS,
    USER_ID_MAX_LENGTH,
    USER_ID_PATTERN,
    aws_length,
    first_bad_tag_char,
)
from identity.models import MappedUser, Principal
from identity.templates import Template, claim_path_problem, is_claim_path, lookup

_SHOWN_MAX: Final = 40
# Bidirectional embeddings, overrides and isolates: they let a name display as another.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown(value: str) -> str:
    """``value`` fit for an error detail: control and format characters removed, at most 40
    shown."""
    kept = "".join(ch for ch in value[: _SHOWN_MAX * 2] if unicodedata.category(ch)[0] != "C")
    if len(kept) > _SHOWN_MAX or len(value) > _SHOWN_MAX * 2:
        return repr(kept[:_SHOWN_MAX]) + "…"
    return repr(kept)


def _describe_char(ch: str) -> str:
    """One character named so that a reader can see it: ``'/'`` or ``U+000A``."""
    if ch.isascii() and ch.isprintable() and ch != " ":
        return repr(ch)
    return f"U+{ord(ch):04X}"


def validate_user_id(value: str) -> str:
    """Return ``value`` if it is a valid Chime AppInstanceUserId; else raise.

    Raises ``UnmappableIdentity`` saying what is wrong.  The id is never shortened or
    rewritten: a different id would be a different user.
    """
    if USER_ID_PATTERN.fullmatch(value):
        return value
    if not value:
        raise UnmappableIdentity("user id is empty")
    if aws_length(value) > USER_ID_MAX_LENGTH:
        raise UnmappableIdentity(
            f"user id {_shown(value)} is {len(value)} characters; "
            f"Chime allows at most {USER_ID_MAX_LENGTH}"
        )
    bad = next((ch for ch in value if ch not in USER_ID_CHARS), None)
    if bad is not None:
        raise UnmappableIdentity(
            f"user id {_shown(value)} contains {_describe_char(bad)}; Chime allows only "
            "ASCII letters, digits and : - _ . @"
        )
    raise UnmappableIdentity(
        f"user id {_shown(value)} must start and end with an ASCII letter or digit"
    )


def app_instance_user_arn(app_instance_arn: str, user_id: str) -> str:
    """The ARN of ``user_id`` in the app instance; the id is validated first.

    Because the id is validated, no value (``*``, ``/``, ``..``) can widen the ARN.
    """
    return f"{app_instance_arn}/user/{validate_user_id(user_id)}"


def _check_tag_key(key: str) -> None:
    if not key:
        raise UnmappableIdentity("tag key is empty")
    if aws_length(key) > TAG_KEY_MAX_LENGTH:
        raise UnmappableIdentity(
            f"tag key {_shown(key)} is longer than {TAG_KEY_MAX_LENGTH} characters"
        )
    bad = first_bad_tag_char(key)
    if bad is not None:
        raise UnmappableIdentity(
            f"tag key {_shown(key)} contains {_describe_char(bad)}, which STS does not allow"
        )
    if key[:4].lower() == "aws:":
        raise UnmappableIdentity(f"tag key {_shown(key)} uses the reserved prefix 'aws:'")


def _check_tag_value(key: str, value: str) -> None:
    if aws_length(value) > TAG_VALUE_MAX_LENGTH:
        raise UnmappableIdentity(
            f"tag {_shown(key)}: value {_shown(value)} is longer than "
            f"{TAG_VALUE_MAX_LENGTH} characters"
        )
    bad = first_bad_tag_char(value)
    if bad is not None:
        raise UnmappableIdentity(
            f"tag {_shown(key)}: value {_shown(value)} contains {_describe_char(bad)}, "
            "which STS does not allow"
        )


def _check_tag_keys(keys: list[str]) -> None:
    if len(keys) > MAX_TAGS:
        raise UnmappableIdentity(f"{len(keys)} tags; STS allows at most {MAX_TAGS}")
    seen: dict[str, str] = {}
    for key in keys:
        _check_tag_key(key)
        # STS treats tag keys case-insensitively: Department and department are one key.
        folded = key.casefold()
        if folded in seen:
            raise UnmappableIdentity(
                f"tag keys {_shown(seen[folded])} and {_shown(key)} differ only in case"
            )
        seen[folded] = key


def validate_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Return ``tags`` as a dict if STS and Cognito would accept them as session tags.

    Keys: 1..128 characters of ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]``, not starting with
    ``aws:``, unique ignoring case.  Values: 0..256 characters of the same set.  At most
    50 tags.  Raises ``UnmappableIdentity`` naming the first problem.
    """
    _check_tag_keys(list(tags))
    for key, value in tags.items():
        _check_tag_value(key, value)
    return dict(tags)


def clean_display_name(value: str) -> str:
    """``value`` with control and bidi-override characters removed, whitespace collapsed,
    at most 100 characters; ``""`` if nothing printable is left."""
    chars: list[str] = []
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            chars.append(" ")
        elif category != "Cs" and ch not in _BIDI_CONTROLS:
            chars.append(ch)
    cleaned = " ".join("".join(chars).split())
    if aws_length(cleaned) <= DISPLAY_NAME_MAX_LENGTH:
        return cleaned
    cut = cleaned[:DISPLAY_NAME_MAX_LENGTH]
    while aws_length(cut) > DISPLAY_NAME_MAX_LENGTH:
        cut = cut[:-1]
    return cut.rstrip()


# -- require rules ------------------------------------------------------------------------

_RuleScalar = str | bool | int


def _strict_bool(value: Any) -> bool | None:
    """``value`` as a boolean if it is one or is exactly ``"true"``/``"false"`` (Apple sends
    ``email_verified`` as a string); ``None`` for anything else."""
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def _matches(claim: Any, expected: _RuleScalar) -> bool:
    """Strict equality of one claim value with one rule value: no type coercion beyond the
    boolean strings."""
    if isinstance(expected, bool):
        return _strict_bool(claim) is expected
    if isinstance(expected, int):
        return isinstance(claim, int) and not isinstance(claim, bool) and claim == expected
    return isinstance(claim, str) and claim == expected


def _elements(claim: Any) -> list[Any] | None:
    """The elements of a list claim, or ``None`` for a scalar."""
    if isinstance(claim, list | tuple):
        return list(claim)
    return None


def _satisfies_equal(expected: _RuleScalar, claim: Any) -> bool:
    return _elements(claim) is None and _matches(claim, expected)


def _satisfies_any(options: tuple[_RuleScalar, ...], claim: Any) -> bool:
    items = _elements(claim)
    values = [claim] if items is None else items
    return any(_matches(value, option) for value in values for option in options)


def _satisfies_all(options: tuple[_RuleScalar, ...], claim: Any) -> bool:
    items = _elements(claim)
    values = [claim] if items is None else items
    return all(any(_matches(value, option) for value in values) for option in options)


_CONDITIONS: Final[dict[str, Callable[[tuple[_RuleScalar, ...], Any], bool]]] = {
    "any_of": _satisfies_any,
    "all_of": _satisfies_all,
}


@dataclass(frozen=True)
class _Rule:
    """One compiled condition on one claim."""

    claim: str
    segments: tuple[str, ...]
    test: Callable[[Any], bool]


def _is_rule_scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int)


def _compile_options(value: Any, path: str, problems: list[str]) -> tuple[_RuleScalar, ...]:
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: must be a non-empty list of strings, booleans or integers")
        return ()
    bad = [i for i, option in enumerate(value) if not _is_rule_scalar(option)]
    for i in bad:
        problems.append(f"{path}[{i}]: must be a string, a boolean or an integer")
    return tuple(value) if not bad else ()


def _compile_rule(claim: str, spec: Any, path: str, problems: list[str]) -> list[_Rule]:
    segments = tuple(claim.split("."))
    if _is_rule_scalar(spec):
        return [_Rule(claim, segments, partial(_satisfies_equal, spec))]
    if isinstance(spec, Mapping) and spec:
        rules: list[_Rule] = []
        for op, operand in spec.items():
            condition = _CONDITIONS.get(op)
            if condition is None:
                problems.append(f"{path}.{op}: unknown condition; use any_of or all_of")
                continue
            options = _compile_options(operand, f"{path}.{op}", problems)
            rules.append(_Rule(claim, segments, partial(condition, options)))
        return rules
    problems.append(
        f"{path}: must be a string, a boolean, an integer, {{any_of: [...]}} or {{all_of: [...]}}"
    )
    return []


class RequirePolicy:
    """A provider's ``map.require`` rules, compiled once; ``check`` only evaluates.

    A scalar rule needs the claim to be equal (strings exactly, booleans strictly: a claim
    may be a boolean or exactly ``"true"``/``"false"``).  ``{any_of: [...]}`` needs a list
    claim with an element equal to one option, or a scalar claim equal to one option;
    ``{all_of: [...]}`` needs every option among the claim's elements.  A missing or null
    claim satisfies no rule.
    """

    def __init__(self, rules: Mapping[str, Any] | None = None, *, path: str = "map.require"):
        """Compile ``rules``; raise ``ConfigError`` listing every malformed one."""
        problems: list[str] = []
        compiled: list[_Rule] = []
        for claim, spec in (rules or {}).items():
            rule_path = f"{path}.{claim}"
            if not isinstance(claim, str) or not is_claim_path(claim):
                problems.append(f"{rule_path}: {claim_path_problem(str(claim))}")
                continue
            compiled.extend(_compile_rule(claim, spec, rule_path, problems))
        if problems:
            raise ConfigError(problems)
        self._rules: tuple[_Rule, ...] = tuple(compiled)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def check(self, claims: Mapping[str, Any]) -> None:
        """Return if every rule holds; else raise ``AccessDenied`` naming the claim."""
        for rule in self._rules:
            value = lookup(claims, rule.claim, rule.segments)
            if value is None:
                raise AccessDenied(f"required claim {rule.claim!r} is missing")
            if not rule.test(value):
                raise AccessDenied(f"claim {rule.claim!r} does not meet this provider's rules")


# -- the mapper ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Namespace:
    """One provider's user-id namespace: the literal prefix of its ``user_id`` template."""

    provider: str
    prefix: str
    allow_shared: bool


def namespaces_of(providers: Iterable[ProviderBase]) -> list[Namespace]:
    """The namespace of every configured provider, in config order."""
    return [
        Namespace(p.name, p.user_id_template.literal_prefix, p.allow_shared_user_ids)
        for p in providers
    ]


class ClaimMapper:
    """Turns one provider's principals into ``MappedUser``s; built once at start-up."""

    def __init__(
        self,
        *,
        provider: str,
        user_id_template: Template,
        user_tag: str,
        display_name_template: Template | None = None,
        tag_templates: Mapping[str, Template] | None = None,
        require: RequirePolicy | None = None,
        namespaces: list[Namespace] | None = None,
        allow_shared_user_ids: bool = False,
        path: str = "",
    ) -> None:
        """Raise ``ConfigError`` if the tag keys (``user_tag`` plus the extra ones) could
        never be sent to STS."""
        self.provider = provider
        self._user_id = user_id_template
        self._display_name = display_name_template
        self._tag_templates = tuple((tag_templates or {}).items())
        self._user_tag = user_tag
        self._require = require if require is not None else RequirePolicy()
        try:
            _check_tag_keys([user_tag, *(key for key, _ in self._tag_templates)])
        except UnmappableIdentity as exc:
            raise ConfigError([f"{path}map.tags: {exc.detail}"]) from exc
        own_prefix = user_id_template.literal_prefix
        # Only the one provider without a prefix can produce ids inside another's namespace;
        # config validation keeps the prefixes themselves distinct and unnested.
        self._foreign_prefixes: tuple[str, ...] = ()
        if not own_prefix:
            self._foreign_prefixes = tuple(
                ns.prefix.lower()
                for ns in namespaces or []
                if ns.provider != provider
                and ns.prefix
                and not (allow_shared_user_ids and ns.allow_shared)
            )

    @classmethod
    def from_provider(
        cls, provider: ProviderBase, *, user_tag: str, namespaces: list[Namespace], path: str
    ) -> ClaimMapper:
        """The mapper for one provider entry of the broker config at YAML path ``path``."""
        return cls(
            provider=provider.name,
            user_id_template=provider.user_id_template,
            display_name_template=provider.display_name_template,
            tag_templates=provider.tag_templates,
            user_tag=user_tag,
            require=RequirePolicy(provider.map.require, path=f"{path}map.require"),
            namespaces=namespaces,
            allow_shared_user_ids=provider.allow_shared_user_ids,
            path=path,
        )

    def map(self, principal: Principal, *, random: str | None = None) -> MappedUser:
        """Apply the require rules, then compute the user id, display name and tags.

        Raises ``AccessDenied`` when a rule fails and ``UnmappableIdentity`` when the claims
        cannot make a valid user id or tag.
        """
        if principal.provider != self.provider:
            raise InternalError(
                log_detail=f"principal of {principal.provider!r} given to {self.provider!r}"
            )
        claims = principal.claims
        self._require.check(claims)
        user_id = validate_user_id(
            self._user_id.render(claims, provider=self.provider, random=random)
        )
        # Ids are compared case-insensitively here: nothing promises AWS compares them by case.
        if self._foreign_prefixes and user_id.lower().startswith(self._foreign_prefixes):
            raise UnmappableIdentity("user id falls into another provider's namespace")
        tags = {self._user_tag: user_id}
        for key, template in self._tag_templates:
            try:
                value = template.render(claims, provider=self.provider, random=random)
            except UnmappableIdentity as exc:
                raise UnmappableIdentity(f"tag {key!r}: {exc.detail}") from exc
            _check_tag_value(key, value)
            tags[key] = value
        return MappedUser(
            provider=self.provider,
            user_id=user_id,
            display_name=self._display_name_for(claims, user_id, random),
            tags=tags,
        )

    def _display_name_for(self, claims: Mapping[str, Any], user_id: str, random: str | None) -> str:
        if self._display_name is None:
            return user_id
        try:
            rendered = self._display_name.render(claims, provider=self.provider, random=random)
        except UnmappableIdentity:
            return user_id
        return clean_display_name(rendered) or user_id


def build_mappers(providers: Sequence[ProviderBase], *, user_tag: str) -> dict[str, ClaimMapper]:
    """One ``ClaimMapper`` per configured provider, keyed by provider name.

    Raises ``ConfigError`` listing every provider whose rules or tag keys are unusable.
    """
    namespaces = namespaces_of(providers)
    mappers: dict[str, ClaimMapper] = {}
    problems: list[str] = []
    for index, provider in enumerate(providers):
        try:
            mappers[provider.name] = ClaimMapper.from_provider(
                provider,
                user_tag=user_tag,
                namespaces=namespaces,
                path=f"providers[{index}].",
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return mappers
