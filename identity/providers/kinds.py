"""The provider kinds, keyed by the YAML ``kind``: the one table that both the config
(which model validates an entry) and start-up (how an entry is built) read. A new kind is
one module with a ``KIND`` and one line here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.providers import (
    amazon,
    apple,
    cognito_user_pool,
    facebook,
    google,
    guest,
    oidc,
    saml,
)
from identity.providers.base import (
    BuildContext,
    ProviderKind,
    ProviderProblem,
    RedirectProvider,
    SamlProvider,
    TokenProvider,
)

KINDS: Final[dict[str, ProviderKind[Any]]] = {
    "oidc": oidc.KIND,
    "google": google.KIND,
    "apple": apple.KIND,
    "facebook": facebook.KIND,
    "amazon": amazon.KIND,
    "cognito_user_pool": cognito_user_pool.KIND,
    "saml": saml.KIND,
    "guest": guest.KIND,
}


@dataclass(frozen=True)
class Providers:
    """Every configured provider, built, by capability and name."""

    token: Mapping[str, TokenProvider] = field(default_factory=dict)
    redirect: Mapping[str, RedirectProvider] = field(default_factory=dict)
    saml: Mapping[str, SamlProvider] = field(default_factory=dict)
    guests: Mapping[str, guest.MeetingGuests] = field(default_factory=dict)


def build_providers(
    entries: Sequence[ProviderBase], context: BuildContext
) -> tuple[Providers, list[tuple[Path, str]]]:
    """Build every entry with its kind's ``build``; return what was built and every
    problem (with its path from the document root) of the entries that could not be."""
    token: dict[str, TokenProvider] = {}
    redirect: dict[str, RedirectProvider] = {}
    saml_providers: dict[str, SamlProvider] = {}
    guests: dict[str, guest.MeetingGuests] = {}
    problems: list[tuple[Path, str]] = []
    for index, entry in enumerate(entries):
        kind = KINDS.get(entry.kind)
        if kind is None:
            problems.append((("providers", index, "kind"), f"unknown kind {entry.kind!r}"))
            continue
        try:
            built = kind.build(entry, context)
        except ProviderProblem as problem:
            problems.append((("providers", index, *problem.path), problem.message))
            continue
        if built.token is not None:
            token[entry.name] = built.token
        if built.redirect is not None:
            redirect[entry.name] = built.redirect
        if built.saml is not None:
            saml_providers[entry.name] = built.saml
        if isinstance(built.guests, guest.MeetingGuests):
            guests[entry.name] = built.guests
    return Providers(token, redirect, saml_providers, guests), problems
