"""The values that cross module boundaries: what a provider saw, what the mapping made of it,
and what AWS vended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Principal:
    """A verified identity as a provider saw it: ``(issuer, subject)`` plus the claims."""

    provider: str
    issuer: str
    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    # What the vending step may forward upstream (``exchange: cognito``): the Logins
    # key and the token Cognito will verify itself.  Never logged.
    login_key: str | None = None
    login_token: str | None = field(default=None, repr=False)
    token_expires_at: datetime | None = None


@dataclass(frozen=True)
class MappedUser:
    """A principal turned into a Chime app instance user id, display name and tags."""

    provider: str
    user_id: str
    display_name: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VendedCredentials:
    """Short-lived AWS credentials and where they came from."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    identity_id: str | None = None


@dataclass(frozen=True)
class Grant:
    """What a successful exchange hands the client."""

    provider: str
    user: MappedUser
    credentials: VendedCredentials
    app_instance_arn: str
    app_instance_user_arn: str
    region: str
    session_token: str | None = None
    session_expires_at: datetime | None = None
    messaging_session_endpoint: str | None = None
