"""Problems with their YAML paths, reported all at once as ``path (line N): message``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, get_args

from pydantic import BaseModel

from identity.errors import ConfigError

Path: TypeAlias = tuple[str | int, ...]

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(path: Path) -> str:
    """``('providers', 1, 'map', 'user_id')`` -> ``providers[1].map.user_id``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


class Report:
    """Collects problems with their paths; formats them with line numbers at the end.

    ``lines`` maps key paths to YAML lines, ``interpolated`` holds the paths whose value
    came from a ``${…}`` reference (never echoed: it may be a secret), ``unresolved``
    the paths whose reference failed (no other problem of theirs is worth naming), and
    ``placeholders`` the paths whose reference was left as a placeholder (``check
    --offline``): no problem of theirs is reported.
    """

    def __init__(
        self,
        source: str,
        lines: Mapping[Path, int] | None = None,
        placeholders: set[Path] | None = None,
    ) -> None:
        self.source = source
        self.lines: dict[Path, int] = dict(lines or {})
        self.interpolated: set[Path] = set()
        self.problems: list[tuple[Path, str]] = []
        self.unresolved: set[Path] = set()
        self.placeholders: set[Path] = set(placeholders or ())

    def add(self, path: Path, message: str) -> None:
        hidden = self.unresolved | self.placeholders
        if not any(path[:end] in hidden for end in range(len(path), 0, -1)):
            self.problems.append((path, message))

    def add_unresolved(self, path: Path, message: str) -> None:
        self.problems.append((path, message))
        self.unresolved.add(path)

    def line(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor with one."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def formatted(self) -> list[str]:
        entries: list[tuple[int, str]] = []
        for path, message in self.problems:
            line = self.line(path)
            where = format_path(path) or self.source
            if line is not None:
                where += f" (line {line})"
            entries.append((line if line is not None else 1 << 30, f"{where}: {message}"))
        entries.sort(key=lambda entry: entry[0])
        return [text for _, text in entries]

    def error(self) -> ConfigError:
        return ConfigError(self.formatted())

    def add_pydantic(
        self,
        path: Path,
        error: Mapping[str, Any],
        model: type[BaseModel] | None,
        *,
        kinds: Sequence[str] = (),
        where: str = "",
    ) -> None:
        """Add one pydantic error at ``path``; ``model`` is the model the error's last key
        belongs to (for "did you mean" on unknown keys)."""
        kind = error["type"]
        if kind == "extra_forbidden" and path:
            allowed = list(model.model_fields) if model is not None else []
            self.add(path, unknown_key(path[-1], allowed, where))
            return
        self.add(path, pydantic_message(error, path not in self.interpolated, kinds))


def unknown_key(key: str | int, allowed: Sequence[str], where: str = "") -> str:
    message = f"unknown key{where}"
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message


def model_at(model: type[BaseModel], relative: Path) -> type[BaseModel] | None:
    """The model class at ``relative`` inside ``model`` (list indices skipped)."""
    current: type[BaseModel] | None = model
    for part in relative:
        if isinstance(part, int) or current is None:
            continue
        found = current.model_fields.get(part)
        current = None
        if found is None:
            return None
        stack = [found.annotation]
        while stack:
            candidate = stack.pop()
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
            stack.extend(get_args(candidate))
    return current


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


def pydantic_message(error: Mapping[str, Any], shown: bool, kinds: Sequence[str] = ()) -> str:
    """One pydantic error in the words of the config check; the input is echoed only
    when ``shown`` (never for interpolated values)."""
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
        return f"unknown kind {ctx.get('tag')!r}; expected one of {', '.join(kinds)}"
    if kind == "union_tag_not_found":
        return "required"
    if kind in ("byte_size", "byte_size_unit"):
        return "expected a size such as '64KiB', '1MiB' or a number of bytes"
    return str(error["msg"])
