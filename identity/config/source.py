"""Reading the YAML: a safe loader that remembers the line of every key and item, and the
``${scheme:reference}`` interpolation, with one resolver per scheme.

Schemes: ``${env:NAME}`` (an environment variable), ``${ssm:/PATH/NAME}`` (an SSM
parameter, decrypted) and ``${secretsmanager:NAME-OR-ARN[#KEY]}`` (a secret, or one key of
its JSON object); ``identity.config.aws_secrets`` reads the last two, once per load. Each
scheme is a ``Resolver``; one that needs a setting of the document itself (the AWS region)
is a ``DocumentResolver``, built when the document has been parsed. ``$${`` is a literal
``${``. A reference that cannot be resolved is a problem of the key that holds it,
reported with every other problem; with ``placeholders=True`` (``check --offline``) it
stands in as a placeholder instead (and nothing is read from AWS).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from identity.config.report import Path, Report
from identity.errors import ConfigError


class Unresolved(Exception):
    """A reference that names nothing: the message says what is missing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Resolver = Callable[[str], str]
"""Takes what follows ``scheme:`` and returns the value, or raises ``Unresolved``."""

DocumentResolver = Callable[[Any, "References"], Resolver]
"""Builds a scheme's ``Resolver`` from the parsed document (before validation) and the
references it is part of (their ``env`` and ``placeholders``)."""

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SSM_NAME: Final = re.compile(r"/?[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*")
_SM_NAME: Final = r"[A-Za-z0-9/_+=.@\-]{1,512}"
_SECRET_ID: Final = re.compile(
    rf"(?:{_SM_NAME}|arn:aws(?:-[a-z]+)*:secretsmanager:[a-z0-9\-]+:\d{{12}}:secret:"
    rf"{_SM_NAME})(?:#[^#\s]+)?"
)
_ARGUMENTS: Final = {"env": _ENV_NAME, "ssm": _SSM_NAME, "secretsmanager": _SECRET_ID}
_FORMS: Final = {
    "env": ("${env:NAME}", "letters, digits and _"),
    "ssm": ("${ssm:/PATH/NAME}", "letters, digits and _.-, with / between path parts"),
    "secretsmanager": (
        "${secretsmanager:NAME-OR-ARN[#KEY]}",
        "a name of letters, digits and /_+=.@- or a secret's ARN, then an optional #KEY",
    ),
}
_MAX_ARGUMENT: Final = 2048


def env_resolver(env: Mapping[str, str]) -> Resolver:
    """``${env:NAME}``: the environment variable ``NAME`` of ``env``."""

    def resolve(name: str) -> str:
        value = env.get(name)
        if value is None:
            raise Unresolved(f"environment variable {name!r} is not set")
        return value

    return resolve


@dataclass(frozen=True)
class References:
    """The schemes ``${…}`` may use, and whether unresolved ones become placeholders."""

    resolvers: Mapping[str, Resolver] = field(default_factory=dict)
    placeholders: bool = False
    document_resolvers: Mapping[str, DocumentResolver] = field(default_factory=dict)

    @property
    def schemes(self) -> list[str]:
        return [*self.resolvers, *(s for s in self.document_resolvers if s not in self.resolvers)]

    def bind(self, document: Any) -> References:
        """These references for ``document``: each ``DocumentResolver`` is built now."""
        if not self.document_resolvers:
            return self
        resolvers = dict(self.resolvers)
        for scheme, build in self.document_resolvers.items():
            resolvers[scheme] = build(document, self)
        return References(resolvers, self.placeholders)

    def syntax_help(self, scheme: str | None = None) -> str:
        """How to write a reference: of ``scheme`` (with its rule), or of any scheme."""
        if scheme in _FORMS:
            form, rule = _FORMS[scheme]
            return f"write {form} ({rule})"
        forms = [_FORMS[s][0] if s in _FORMS else f"${{{s}:…}}" for s in self.schemes]
        listed = f"{', '.join(forms[:-1])} or {forms[-1]}" if len(forms) > 1 else "".join(forms)
        return f"write {listed} (or $${{ for a literal ${{)"

    def valid_argument(self, scheme: str, argument: str) -> bool:
        if len(argument) > _MAX_ARGUMENT:
            return False
        rule = _ARGUMENTS.get(scheme)
        if rule is not None:
            return rule.fullmatch(argument) is not None
        return bool(argument) and not any(ch.isspace() for ch in argument)


def placeholder(scheme: str, argument: str) -> str:
    """What an unresolved reference stands as under ``placeholders``: long enough for any
    length rule on a secret, and plainly not a real value."""
    return f"placeholder-for-{scheme}-{argument}".ljust(48, "-")


# -- YAML with line numbers ----------------------------------------------------------------


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


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; raise ``ConfigError`` naming the line of a syntax error."""
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


# -- interpolation -------------------------------------------------------------------------

_REFERENCE: Final = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_MAX_NODES: Final = 100_000


class Preparer:
    """Copies parsed YAML into plain dicts and lists, recording each key's line in the
    report and resolving ``${scheme:reference}``."""

    def __init__(self, report: Report, references: References) -> None:
        self.report = report
        self.references = references
        self.nodes = 0

    def prepare(self, value: Any, path: Path = ()) -> Any:
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
        references = self.references

        def replace(match: re.Match[str]) -> str:
            whole = match[0]
            if whole == "$${":
                return "${"
            scheme, _, argument = (match[1] or "").partition(":")
            resolver = references.resolvers.get(scheme) if match[1] is not None else None
            if resolver is None or not references.valid_argument(scheme, argument):
                how = references.syntax_help(scheme if resolver is not None else None)
                self.report.add_unresolved(path, f"{whole!r} is not a reference: {how}")
                return whole
            self.report.interpolated.add(path)
            try:
                return resolver(argument)
            except Unresolved as exc:
                if references.placeholders:
                    self.report.placeholders.add(path)
                    return placeholder(scheme, argument)
                self.report.add_unresolved(path, exc.message)
                return ""

        return _REFERENCE.sub(replace, text)
