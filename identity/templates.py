"""The template language of ``map.user_id``, ``map.display_name`` and ``map.tags``.

A template is literal text with placeholders: ``okta-{sub}``, ``{email|lower}``,
``corp-{name_id|sha256:24}``, ``{address.country}``.

* ``{claim}`` is a claim; ``{a.b}`` is the claim named ``a.b`` if there is one, else
  ``b`` inside the object claim ``a`` (the same lookup as ``map.require``).
* Claim names are letters, digits and ``_ : -``, separated by dots for nesting.
* Filters apply left to right: ``|lower`` lower-cases, ``|sha256:N`` keeps the first N
  (1..64) hex digits of the SHA-256 of the UTF-8 value.
* ``{provider}`` is the provider's name; ``{random}`` (guest providers only) is a fresh
  random value the caller supplies.
* ``{{`` and ``}}`` are literal braces.

Templates are compiled once at start-up; ``Template.render`` walks a precompiled list of
parts and never parses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from identity.errors import UnmappableIdentity

_CLAIMS_URI: Final = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MUTABLE_CLAIMS: Final = frozenset(
    {
        # OIDC standard claims, and the ones Microsoft Entra ID adds.
        "email",
        "preferred_username",
        "name",
        "given_name",
        "family_name",
        "middle_name",
        "nickname",
        "phone_number",
        "upn",
        "unique_name",
        # SAML attributes by FriendlyName (LDAP / eduPerson), and by Name: OIDs and the
        # claim URIs of AD FS and Entra ID.
        "mail",
        "displayName",
        "givenName",
        "sn",
        "cn",
        "eduPersonPrincipalName",
        "userPrincipalName",
        "emailAddress",
        "urn:oid:0.9.2342.19200300.100.1.3",  # mail
        "urn:oid:1.2.840.113549.1.9.1",  # emailAddress (PKCS #9; Keycloak's X500 email)
        "urn:oid:1.3.6.1.4.1.5923.1.1.1.6",  # eduPersonPrincipalName
        "urn:oid:2.16.840.1.113730.3.1.241",  # displayName
        "urn:oid:2.5.4.42",  # givenName
        "urn:oid:2.5.4.4",  # sn
        "urn:oid:2.5.4.3",  # cn
        f"{_CLAIMS_URI}emailaddress",
        f"{_CLAIMS_URI}upn",
        f"{_CLAIMS_URI}name",
        f"{_CLAIMS_URI}givenname",
        f"{_CLAIMS_URI}surname",
        "http://schemas.microsoft.com/identity/claims/displayname",
        # AD FS's older claim URIs.
        "http://schemas.xmlsoap.org/claims/EmailAddress",
        "http://schemas.xmlsoap.org/claims/UPN",
        "http://schemas.xmlsoap.org/claims/CommonName",
    }
)
"""Claims a user (or an admin) can change, or that name a person rather than an account:
a user id that reads one is not stable. Compared without regard to case."""

_MUTABLE_FOLDED: Final = frozenset(claim.casefold() for claim in MUTABLE_CLAIMS)

MIN_USER_ID_SHA256: Final = 16
"""``sha256:N`` keeps N hex digits; below 16 (64 bits) two users' ids may collide."""


def is_mutable_claim(path: str) -> bool:
    """Whether the claim ``path`` (a name, a dotted path or an attribute name) is one of
    ``MUTABLE_CLAIMS``, as a whole or by its last segment."""
    folded = path.casefold()
    return folded in _MUTABLE_FOLDED or folded.rsplit(".", 1)[-1] in _MUTABLE_FOLDED


BUILTINS: Final = frozenset({"provider", "random"})

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_:\-]*"
CLAIM_PATH: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
"""A claim name or dotted path, as templates and ``map.require`` accept it (fullmatch)."""

_SHA256_MAX: Final = 64
_KNOWN_FILTERS: Final = "lower, sha256:N"

_CLAIM, _PROVIDER, _RANDOM = 0, 1, 2
_MISSING: Final = object()


class TemplateError(ValueError):
    """A template does not parse; the message quotes the offending part."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingClaim(UnmappableIdentity):
    """A template names a claim the identity does not have (absent or null)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the identity has no {path!r} claim")
        self.path = path


class UnrenderableClaim(UnmappableIdentity):
    """A template names a claim whose value is not a string, integer or boolean."""

    def __init__(self, path: str, value: Any) -> None:
        super().__init__(f"the {path!r} claim is {_kind_of(value)}, not a single value")
        self.path = path


def _kind_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float):
        return "a fractional number"
    return f"a {type(value).__name__}"


def is_claim_path(text: str) -> bool:
    """Whether ``text`` is a claim name or dotted claim path."""
    return CLAIM_PATH.fullmatch(text) is not None


def claim_path_problem(text: str) -> str:
    """Why ``text`` is not a claim path, with a hint for a SAML attribute named by a URI."""
    if "://" in text:
        return (
            f"{text!r} is a URI: name a SAML attribute by a short name given in the "
            "provider's attributes ({short_name: URI})"
        )
    return f"{text!r} is not a valid claim name or dotted path"


def lookup(claims: Mapping[str, Any], dotted: str, segments: tuple[str, ...]) -> Any:
    """The claim ``dotted``: the exact name first, then the nested walk over ``segments``.

    Returns ``None`` when the claim is absent.
    """
    value = claims.get(dotted, _MISSING)
    if value is not _MISSING:
        return value
    if len(segments) == 1:
        return None
    current: Any = claims
    for segment in segments:
        if not isinstance(current, Mapping):
            return None
        current = current.get(segment)
        if current is None:
            return None
    return current


def _as_text(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    # bool first: True is an int too.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise UnrenderableClaim(path, value)


def _lower(value: str) -> str:
    return value.lower()


def _sha256(length: int) -> Callable[[str], str]:
    def digest(value: str) -> str:
        return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]

    return digest


@dataclass(frozen=True, slots=True)
class _Placeholder:
    """One compiled ``{...}``: what it reads and the filters applied to it."""

    source: str
    kind: int
    dotted: str
    segments: tuple[str, ...]
    filters: tuple[Callable[[str], str], ...]
    lossy: tuple[str, ...]

    def render(self, claims: Mapping[str, Any], provider: str, random: str | None) -> str:
        if self.kind == _CLAIM:
            value = lookup(claims, self.dotted, self.segments)
            if value is None:
                raise MissingClaim(self.dotted)
            text = _as_text(value, self.dotted)
        elif self.kind == _PROVIDER:
            text = provider
        else:
            if random is None:
                raise ValueError(f"{self.source} needs a random value and none was given")
            text = random
        for apply in self.filters:
            text = apply(text)
        return text


_Part = str | _Placeholder


@dataclass(frozen=True)
class Template:
    """A compiled template.  Build it with ``compile_template``.

    ``fields`` are the claim paths it reads (built-ins excluded), in order of first use;
    ``literal_prefix`` is the literal text before the first placeholder (all of it when
    there is none); ``is_bare_claim`` is true for exactly ``{claim}``, no filter, no text;
    ``lossy_filters`` are the filters that can give two values one result (``lower``,
    ``sha256:N`` with N below ``MIN_USER_ID_SHA256``), as written.
    """

    source: str
    fields: tuple[str, ...]
    lossy_filters: tuple[str, ...]
    literal_prefix: str
    is_bare_claim: bool
    uses_random: bool
    literals: tuple[str, ...]
    _parts: tuple[_Part, ...] = field(repr=False, compare=False)

    def render(self, claims: Mapping[str, Any], *, provider: str, random: str | None = None) -> str:
        """The template filled from ``claims``.

        Raises ``MissingClaim`` when a claim is absent or null and ``UnrenderableClaim``
        when it is a list, an object or a fractional number.  Booleans render as
        ``true``/``false``, integers in decimal.
        """
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(part.render(claims, provider, random))
        return "".join(out)

    def __str__(self) -> str:
        return self.source


def _compile_filter(spec: str, placeholder: str) -> Callable[[str], str]:
    name, colon, argument = spec.partition(":")
    if not name:
        raise TemplateError(f"{placeholder!r} has an empty filter")
    if name == "lower":
        if colon:
            raise TemplateError(f"{placeholder!r} passes an argument to 'lower', which takes none")
        return _lower
    if name == "sha256":
        if not (argument.isascii() and argument.isdigit()) or not (
            1 <= int(argument) <= _SHA256_MAX
        ):
            raise TemplateError(f"{placeholder!r} needs sha256:N with N from 1 to {_SHA256_MAX}")
        return _sha256(int(argument))
    raise TemplateError(f"{placeholder!r} uses unknown filter {name!r} (known: {_KNOWN_FILTERS})")


def _compile_placeholder(body: str, allow_random: bool) -> _Placeholder:
    placeholder = "{" + body + "}"
    name, *filter_specs = body.split("|")
    if not name:
        raise TemplateError(f"{placeholder!r} names no claim")
    if not is_claim_path(name):
        raise TemplateError(f"{placeholder!r}: {claim_path_problem(name)}")
    filters = tuple(_compile_filter(spec, placeholder) for spec in filter_specs)
    lossy = tuple(spec for spec in filter_specs if _is_lossy(spec))
    if name == "random":
        if not allow_random:
            raise TemplateError("'{random}' is only available to guest providers")
        kind = _RANDOM
    elif name == "provider":
        kind = _PROVIDER
    else:
        kind = _CLAIM
    return _Placeholder(placeholder, kind, name, tuple(name.split(".")), filters, lossy)


def _is_lossy(spec: str) -> bool:
    """Whether the (compiled, so well-formed) filter ``spec`` can merge distinct values."""
    name, _, argument = spec.partition(":")
    return name == "lower" or (name == "sha256" and int(argument) < MIN_USER_ID_SHA256)


def compile_template(text: str, *, allow_random: bool = False) -> Template:
    """Parse ``text`` into a ``Template``; raise ``TemplateError`` if it does not parse."""
    if not text:
        raise TemplateError("a template cannot be empty")
    parts: list[_Part] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            reopen = text.find("{", i + 1)
            if end < 0 or 0 <= reopen < end:
                stop = n if reopen < 0 else reopen
                raise TemplateError(f"{text[i:stop]!r} is missing its closing '}}'")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_compile_placeholder(text[i + 1 : end], allow_random))
            i = end + 1
        elif ch == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise TemplateError(
                f"{text!r} has a '}}' with no opening '{{' (write '}}}}' for a literal brace)"
            )
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))

    placeholders = [p for p in parts if isinstance(p, _Placeholder)]
    fields: list[str] = []
    for p in placeholders:
        if p.kind == _CLAIM and p.dotted not in fields:
            fields.append(p.dotted)
    prefix = parts[0] if parts and isinstance(parts[0], str) else ""
    bare = (
        len(parts) == 1
        and isinstance(parts[0], _Placeholder)
        and parts[0].kind == _CLAIM
        and not parts[0].filters
    )
    return Template(
        source=text,
        fields=tuple(fields),
        lossy_filters=tuple(spec for p in placeholders for spec in p.lossy),
        literal_prefix=prefix,
        is_bare_claim=bare,
        uses_random=any(p.kind == _RANDOM for p in placeholders),
        literals=tuple(p for p in parts if isinstance(p, str)),
        _parts=tuple(parts),
    )
