"""A dry run of one login: what the broker would decide for a token, a SAML assertion or a
bare claims set, without vending, provisioning or any AWS call.

The same verification (JWKS or metadata fetched as the provider does), the same claim
mapper (``require`` rules, namespaces, Chime and STS patterns) and the same STS session
name derivation as a real login run here; the result names the role the exchange would use.
A refusal is an ``Explained`` with the ``code`` ``POST /v1/token`` would answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from identity import errors
from identity.config.document import BrokerConfig
from identity.config.models import ProviderBase
from identity.limits import SESSION_NAME_PATTERN
from identity.mapping import ClaimMapper, app_instance_user_arn
from identity.models import MappedUser, Principal
from identity.vending.sts import role_session_name
from identity.wiring import Verified

POOL_ROLE: Final = "the identity pool's authenticated role"

# What a dry run of a SAML response cannot know: it holds no AuthnRequest and no replay cache.
SAML_NOT_CHECKED: Final = (
    "InResponseTo (no stored AuthnRequest to compare with)",
    "one-time use of the assertion ID (replay cache)",
)


@dataclass(frozen=True)
class Explained:
    """The outcome of one dry run: ``body`` is the JSON object to print, ``accepted`` says
    whether the login would go on to vending."""

    accepted: bool
    body: dict[str, Any] = field(default_factory=dict)


def role_for(config: BrokerConfig, provider: ProviderBase) -> str:
    """The role the provider's exchange would use: an ARN, or the identity pool's role."""
    if provider.exchange == "sts":
        if provider.role_arn is not None:
            return str(provider.role_arn)
        if config.aws.sts is not None:
            return str(config.aws.sts.role_arn)
        return "none configured"
    if provider.exchange == "cognito" and provider.custom_role_arn is not None:
        return str(provider.custom_role_arn)
    cognito = config.aws.cognito
    if cognito is not None and cognito.role_arn is not None:
        return str(cognito.role_arn)
    return POOL_ROLE


def _refusal(
    provider: str, error: errors.BrokerError, *, secret: str | None, extra: Mapping[str, Any]
) -> Explained:
    detail = error.detail
    log_detail = error.log_detail
    # The log detail is more precise (the failing claim, the library's reason); it is shown
    # unless it could carry what was presented.
    if log_detail and log_detail != detail and (not secret or secret not in log_detail):
        detail = f"{detail}: {log_detail}"
    return Explained(False, {"provider": provider, "code": error.code, "detail": detail, **extra})


class Explainer:
    """Dry runs against one validated config and the providers ``wiring.verify`` built."""

    def __init__(self, config: BrokerConfig, verified: Verified) -> None:
        self.config = config
        self.providers = verified.providers
        self.mappers: Mapping[str, ClaimMapper] = verified.mappers

    def provider(self, name: str) -> ProviderBase:
        found = self.config.provider(name)
        if found is None:
            raise errors.UnknownProvider(f"no provider named {name!r}")
        return found

    def takes_tokens(self, name: str) -> bool:
        return name in self.providers.token

    def takes_assertions(self, name: str) -> bool:
        return name in self.providers.saml

    def token(self, name: str, token: str) -> Explained:
        """Verify ``token`` as ``POST /v1/token`` would (an id token, or an access token for
        the providers that take only those), then map it."""
        provider = self.providers.token[name]
        presented = "id_token" if provider.accepts_id_token else "access_token"
        extra: dict[str, Any] = {"verified_as": presented, "signature_checked": True}
        try:
            if provider.accepts_id_token:
                principal = provider.verify_id_token(token, nonce=None)
            else:
                principal = provider.verify_access_token(token)
            return self._mapped(name, principal, extra)
        except errors.BrokerError as error:
            return _refusal(name, error, secret=token, extra=extra)

    def assertion(self, name: str, saml_response_b64: str) -> Explained:
        """Check a SAML response's signature, issuer, audience, recipient and times, then
        map it; what a dry run cannot check is listed under ``not_checked``."""
        saml = self.providers.saml[name]
        extra: dict[str, Any] = {"signature_checked": True, "not_checked": list(SAML_NOT_CHECKED)}
        try:
            principal = saml.check_assertion(saml_response_b64)
            return self._mapped(name, principal, extra)
        except errors.BrokerError as error:
            return _refusal(name, error, secret=None, extra=extra)

    def claims(self, name: str, claims: Mapping[str, Any]) -> Explained:
        """Map a bare claims set (no signature to check), for designing templates."""
        extra: dict[str, Any] = {"signature_checked": False}
        issuer, subject = claims.get("iss"), claims.get("sub", claims.get("name_id"))
        principal = Principal(
            provider=name,
            issuer=issuer if isinstance(issuer, str) else "",
            subject=subject if isinstance(subject, str) else "",
            claims=dict(claims),
        )
        try:
            return self._mapped(name, principal, extra)
        except errors.BrokerError as error:
            return _refusal(name, error, secret=None, extra=extra)

    def _mapped(self, name: str, principal: Principal, extra: Mapping[str, Any]) -> Explained:
        provider = self.provider(name)
        user: MappedUser = self.mappers[name].map(principal)
        arn = app_instance_user_arn(self.config.chime.app_instance_arn, user.user_id)
        body: dict[str, Any] = {
            "provider": name,
            "exchange": provider.exchange,
            "user_id": user.user_id,
            "display_name": user.display_name,
            "tags": dict(user.tags),
            "app_instance_user_arn": arn,
            "role": role_for(self.config, provider),
        }
        if provider.exchange == "sts":
            session_name = role_session_name(user.user_id)
            if not SESSION_NAME_PATTERN.fullmatch(session_name):
                raise errors.UnmappableIdentity(
                    f"user id gives an invalid STS session name {session_name!r}"
                )
            body["role_session_name"] = session_name
        elif provider.exchange == "cognito":
            body["tags_from"] = "the identity pool's principal-tag map"
        body.update(extra)
        return Explained(True, body)
