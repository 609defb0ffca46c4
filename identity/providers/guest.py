"""Meeting guests: people without an account at any identity provider.

Outside demo a guest needs an invite: a short-lived JWT that the meeting app's backend
signs (HS256 with ``invite.shared_secret``, or a key published at ``invite.jwks_url``)
for ``invite.audience``, verified by the one ``verify_jwt``.  It must carry ``jti``,
``iat`` and ``exp``, live at most ``MAX_INVITE_LIFETIME``, and is accepted once: its
``jti`` stays in the store's replay cache until the invite has expired.  A provider with
``allow_open_guests: true`` (or any guest provider in demo mode) also admits guests
without an invite, at most ``OPEN_GUESTS_PER_MINUTE`` per client address.

The guest never chooses its user id: it comes from the admin's ``map.user_id`` template
over the verified invite's claims and a fresh ``{random}``, never from the request.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

from pydantic import Field, SecretStr

from identity.config.models import (
    SHORT_CREDENTIALS,
    SHORT_CREDENTIALS_WARNING,
    Frozen,
    Problem,
    ProviderBase,
    ValidationContext,
)
from identity.config.report import Path
from identity.config.types import MIN_SECRET_KEY_LENGTH, NonEmptyStr, SecureUrl
from identity.errors import InvalidRequest, InvalidToken, RateLimited
from identity.mapping import clean_display_name
from identity.models import Principal
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.store import Store
from identity.tokens import JwksCache, JwtPolicy, SharedSecret, verify_jwt

__all__ = [
    "INVITE_ALGORITHMS",
    "MAX_INVITE_LIFETIME",
    "OPEN_GUESTS_PER_MINUTE",
    "Admission",
    "GuestConfig",
    "InviteConfig",
    "MeetingGuests",
    "guest_display_name",
]

INVITE_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
"""What a JWKS-verified invite may be signed with; each key still verifies only its own
family.  Shared-secret invites are HS256."""
MAX_INVITE_LIFETIME: Final = 24 * 3600
"""The longest ``exp - iat`` an invite may have (s): invites are for one meeting."""
OPEN_GUESTS_PER_MINUTE: Final = 10
"""Invite-less guest sign-ins allowed per client address and provider per minute."""
RATE_WINDOW: Final = 60
RANDOM_BYTES: Final = 16
MAX_JTI_LENGTH: Final = 256

_INVITE_CLAIMS: Final = ("iss", "aud", "exp", "iat", "jti")
_REPLAY_PREFIX: Final = "guest-invite:"
_RATE_PREFIX: Final = "guest-rate:"


class InviteConfig(Frozen):
    """Signed guest invites: a JWT from ``issuer`` for ``audience``, verified with the
    keys at ``jwks_url`` or with ``shared_secret`` (HS256)."""

    issuer: NonEmptyStr
    audience: NonEmptyStr
    jwks_url: SecureUrl | None = None
    shared_secret: SecretStr | None = None


class GuestConfig(ProviderBase):
    """Meeting guests: no IdP; optionally a signed invite."""

    default_user_id: ClassVar[str] = "guest-{random}"
    nonce_capable: ClassVar[bool] = False
    pool_can_verify: ClassVar[bool] = False
    described_as: ClassVar[str] = "guest providers"

    kind: Literal["guest"]
    invite: InviteConfig | None = None
    allow_open_guests: bool = False
    credential_ttl: int = Field(1800, ge=900, le=43200)
    user_expiration_days: int = Field(1, ge=1, le=5475)

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        if self.invite is not None and self.invite.jwks_url is not None:
            return [(("invite", "jwks_url"), self.invite.jwks_url)]
        return []

    def _random_problems(self) -> list[Problem]:
        return []

    def user_id_problems(self) -> list[Problem]:
        if self.invite is None:
            # Open guests have no verified claims: kind_problems asks for {random} instead.
            return self.user_id_char_problems()
        return super().user_id_problems()

    def kind_problems(self, context: ValidationContext) -> list[Problem]:
        problems: list[Problem] = []
        invite = self.invite
        if invite is not None:
            if (invite.jwks_url is None) == (invite.shared_secret is None):
                problems.append((("invite",), "needs exactly one of jwks_url or shared_secret"))
            elif (
                invite.shared_secret is not None
                and len(invite.shared_secret.get_secret_value()) < MIN_SECRET_KEY_LENGTH
            ):
                problems.append(
                    (
                        ("invite", "shared_secret"),
                        f"must be at least {MIN_SECRET_KEY_LENGTH} characters",
                    )
                )
        elif context.mode == "production" and not self.allow_open_guests:
            problems.append(
                (("invite",), "required outside mode demo, unless allow_open_guests: true")
            )
        if invite is None and not self.user_id_template.uses_random:
            problems.append(
                (
                    ("map", "user_id"),
                    "guests without an invite have no verified claims: the user id must use "
                    "'{random}'",
                )
            )
        if self.exchange != "sts" and "credential_ttl" in self.model_fields_set:
            problems.append(
                (
                    ("credential_ttl",),
                    "applies to exchange: sts only (Cognito always issues one-hour credentials)",
                )
            )
        return problems

    def warnings(self) -> list[Problem]:
        if self.exchange == "sts" and self.credential_ttl < SHORT_CREDENTIALS:
            return [(("credential_ttl",), SHORT_CREDENTIALS_WARNING)]
        return []


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Admission:
    """A guest let in: who it is, the ``{random}`` its user id may use, and (when it came
    with an invite) the replay-cache key that marks the invite as used."""

    principal: Principal
    random: str
    replay_key: str | None = None


class MeetingGuests:
    """One ``kind: guest`` provider; built once at start-up, safe to share across threads."""

    def __init__(
        self,
        provider: GuestConfig,
        *,
        store: Store,
        open_guests: bool,
        open_issuer: str,
        keys: JwksCache | SharedSecret | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``open_guests``: whether a request without an invite is admitted at all;
        ``open_issuer``: the issuer recorded for such guests (the broker itself);
        ``keys``: what verifies invites (``None`` when the provider takes none)."""
        self.name = provider.name
        self._store = store
        self._open_guests = open_guests
        self._open_issuer = open_issuer
        self._clock = clock
        self._leeway = provider.leeway
        self._invites: tuple[JwtPolicy, JwksCache | SharedSecret] | None = None
        invite = provider.invite
        if invite is not None and keys is not None:
            policy = JwtPolicy(
                issuers=(invite.issuer,),
                audiences=(invite.audience,),
                algorithms=("HS256",) if isinstance(keys, SharedSecret) else INVITE_ALGORITHMS,
                leeway=provider.leeway,
                max_age=MAX_INVITE_LIFETIME,
                required_claims=_INVITE_CLAIMS,
            )
            self._invites = (policy, keys)

    def __repr__(self) -> str:
        return f"MeetingGuests(name={self.name!r})"

    def admit(self, invite: str | None, *, client_address: str) -> Admission:
        """Let a guest in with ``invite`` (a JWT) or, where allowed, without one.

        Raises ``InvalidToken`` for a missing (where required), forged, expired, foreign,
        over-long-lived or already used invite, ``InvalidRequest`` for an invite sent to a
        provider that takes none, and ``RateLimited`` (with ``retry_after``) when
        ``client_address`` has had its share of invite-less sign-ins this minute.
        """
        random = secrets.token_hex(RANDOM_BYTES)
        if invite is None:
            if not self._open_guests:
                raise InvalidToken("this meeting needs an invite")
            self._count_open_guest(client_address)
            principal = Principal(provider=self.name, issuer=self._open_issuer, subject=random)
            return Admission(principal=principal, random=random)
        if self._invites is None:
            raise InvalidRequest(f"provider {self.name!r} takes no invites")
        claims = self._verify(invite, *self._invites)
        replay_key = self._use_once(claims)
        subject = claims.get("sub")
        principal = Principal(
            provider=self.name,
            issuer=claims["iss"],
            # The app's own id for the attendee when it names one; else nobody in particular.
            subject=subject if isinstance(subject, str) and subject else random,
            claims=claims,
        )
        return Admission(principal=principal, random=random, replay_key=replay_key)

    def release(self, admission: Admission) -> None:
        """Make the admission's invite usable again: the sign-in it started issued nothing
        (AWS failed), so the guest may retry with the same invite."""
        if admission.replay_key is not None:
            self._store.delete(admission.replay_key)

    def _verify(
        self, invite: str, policy: JwtPolicy, keys: JwksCache | SharedSecret
    ) -> dict[str, Any]:
        claims = verify_jwt(invite, policy=policy, keys=keys, now=self._clock())
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise InvalidToken("malformed claim 'jti'", log_detail="jti is empty or too long")
        # verify_jwt has checked that both are finite numbers.
        if float(claims["exp"]) - float(claims["iat"]) > MAX_INVITE_LIFETIME:
            raise InvalidToken(
                "invite lives too long",
                log_detail=f"exp - iat over {MAX_INVITE_LIFETIME}s",
            )
        return claims

    def _use_once(self, claims: Mapping[str, Any]) -> str:
        # Not per provider: two guest providers that trust one issuer spend its invites once.
        key = _REPLAY_PREFIX + _digest(claims["iss"], claims["jti"])
        # Kept until no clock within the leeway could still accept the invite.
        ttl = max(1.0, float(claims["exp"]) + self._leeway - self._clock())
        if not self._store.set_if_absent(key, b"1", ttl):
            raise InvalidToken("invite already used", log_detail="replayed jti")
        return key

    def _count_open_guest(self, client_address: str) -> None:
        now = self._clock()
        window = int(now // RATE_WINDOW)
        key = f"{_RATE_PREFIX}{_digest(self.name, str(window), client_address)}"
        if self._store.incr(key, RATE_WINDOW) > OPEN_GUESTS_PER_MINUTE:
            raise RateLimited(
                "too many guest sign-ins from this address; retry shortly",
                retry_after=max(1, math.ceil((window + 1) * RATE_WINDOW - now)),
            )


def guest_display_name(principal: Principal, requested: str | None, fallback: str) -> str:
    """A guest's name: the invite's ``name`` claim, else the name the guest asked for,
    each cleaned of control characters and cut to 100 characters; else ``fallback``."""
    for candidate in (principal.claims.get("name"), requested):
        if isinstance(candidate, str):
            cleaned = clean_display_name(candidate)
            if cleaned:
                return cleaned
    return fallback


def build(entry: GuestConfig, context: BuildContext) -> Built:
    """The guest provider; invite keys are built here (a JWKS is fetched on the first
    invite, then cached)."""
    timeouts = context.aws.timeouts
    keys: JwksCache | SharedSecret | None = None
    invite = entry.invite
    if invite is not None and invite.shared_secret is not None:
        keys = SharedSecret(invite.shared_secret.get_secret_value().encode("utf-8"))
    elif invite is not None and invite.jwks_url is not None:
        keys = JwksCache(
            jwks_url=invite.jwks_url,
            algorithms=INVITE_ALGORITHMS,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        )
    guests = MeetingGuests(
        entry,
        store=context.store,
        open_guests=entry.allow_open_guests or context.demo,
        open_issuer=context.service.public_url,
        keys=keys,
        clock=context.clock,
    )
    return Built(guests=guests)


KIND = ProviderKind(model=GuestConfig, build=build)
