"""``kind: facebook``: Facebook Login.

Mobile apps present a user access token, which is checked with the Graph API's
``debug_token`` (with this app's app access token) and read with ``/me``; it must have been
issued to ``app_id``. Limited Login id tokens are not accepted: their ``nonce`` is the only
thing ``require_nonce`` could check, so a Facebook entry cannot set it. The browser login
is the code flow at Facebook's endpoints, whose access token is inspected the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from identity.config.models import ProviderBase
from identity.config.report import Path
from identity.config.types import NonEmptyStr, SecureUrl
from identity.errors import InvalidToken, UpstreamError
from identity.models import Principal
from identity.providers.base import BuildContext, Built, ProviderKind
from identity.providers.code_flow import (
    AccessTokenInspection,
    AuthorizationServer,
    CodeFlowProvider,
    fixed,
    static_secret,
)
from identity.providers.inspection import (
    AccessTokenProvider,
    InspectionClient,
    check_access_token_shape,
    profile_claims,
    short,
    string,
)
from identity.tokens import expiry_time

LOGIN_KEY: Final = "graph.facebook.com"
"""The identity pool's ``Logins`` key for Facebook."""
FACEBOOK_PROFILE_FIELDS: Final = "id,name,email"


class FacebookConfig(ProviderBase):
    """Facebook Login: user access tokens inspected at ``debug_token_url`` and read at
    ``userinfo_url``."""

    nonce_capable: ClassVar[bool] = False

    kind: Literal["facebook"]
    app_id: NonEmptyStr
    app_secret: SecretStr
    debug_token_url: SecureUrl = "https://graph.facebook.com/debug_token"  # noqa: S105
    issuer: SecureUrl = "https://www.facebook.com"
    authorize_url: SecureUrl = "https://www.facebook.com/dialog/oauth"
    token_url: SecureUrl = "https://graph.facebook.com/oauth/access_token"  # noqa: S105
    userinfo_url: SecureUrl | None = "https://graph.facebook.com/me"

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer", "authorize_url", "token_url", "userinfo_url", "debug_token_url")


class FacebookTokenProvider(AccessTokenProvider):
    """Facebook Login user access tokens, checked with the Graph API's ``debug_token``
    (with this app's app access token) and read with ``/me``."""

    def __init__(
        self,
        *,
        name: str,
        app_id: str,
        app_secret: str,
        issuer: str,
        debug_token_url: str,
        userinfo_url: str | None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, kind="facebook")
        self.app_id = app_id
        self._app_secret = app_secret
        self.issuer = issuer
        self.debug_token_url = debug_token_url
        self.userinfo_url = userinfo_url
        query = parse_qs(urlsplit(userinfo_url).query) if userinfo_url is not None else {}
        self._profile_fields = None if "fields" in query else FACEBOOK_PROFILE_FIELDS
        self._api = InspectionClient(
            provider=name, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"FacebookTokenProvider(name={self._name!r}, app_id={self.app_id!r})"

    def verify_access_token(self, access_token: str) -> Principal:
        """Valid, issued to ``app_id``, not expired, of a user: the user's principal."""
        check_access_token_shape(access_token)
        inspection = self._api.get_json(
            self.debug_token_url,
            what="debug_token",
            params={
                "input_token": access_token,
                "access_token": f"{self.app_id}|{self._app_secret}",
            },
        )
        data = inspection.get("data")
        if not isinstance(data, dict):
            raise UpstreamError(
                f"{self._name}: debug_token answer has no data",
                log_detail="debug_token answer without a 'data' object",
            )
        if data.get("is_valid") is not True:
            raise InvalidToken("token is not valid", log_detail="debug_token: is_valid is not true")
        if data.get("app_id") != self.app_id:
            raise InvalidToken(
                "token was issued to another app",
                log_detail=f"debug_token: app_id {short(data.get('app_id'))}",
            )
        if data.get("type", "USER") != "USER":
            raise InvalidToken(
                "not a user access token", log_detail=f"debug_token: type {short(data['type'])}"
            )
        expires_at = data.get("expires_at", 0)
        if isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise UpstreamError(
                f"{self._name}: debug_token answer is malformed",
                log_detail="debug_token: expires_at is not an integer",
            )
        # 0 means the token never expires.
        if expires_at != 0 and expires_at <= self._clock():
            raise InvalidToken("token expired", log_detail="debug_token: expires_at has passed")
        user_id = string(data, "user_id")
        if user_id is None:
            raise InvalidToken("token names no user", log_detail="debug_token: no user_id")

        return Principal(
            provider=self._name,
            issuer=self.issuer,
            subject=user_id,
            claims=profile_claims(user_id, self._profile(access_token, user_id)),
            login_key=LOGIN_KEY,
            login_token=access_token,
            token_expires_at=expiry_time(expires_at, what="token expiry") if expires_at else None,
        )

    def _profile(self, access_token: str, user_id: str) -> Mapping[str, Any]:
        if self.userinfo_url is None:
            return {}
        params = {"appsecret_proof": self._appsecret_proof(access_token)}
        if self._profile_fields is not None:
            params["fields"] = self._profile_fields
        profile = self._api.get_json(
            self.userinfo_url,
            what="profile",
            params=params,
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if profile.get("id") != user_id:
            raise UpstreamError(
                f"{self._name}: profile does not match the token",
                log_detail="profile id differs from debug_token user_id",
            )
        return profile

    def _appsecret_proof(self, access_token: str) -> str:
        # Graph API calls signed with the app secret: a stolen token alone cannot make them
        # when the app requires proofs.
        return hmac.new(
            self._app_secret.encode("utf-8"), access_token.encode("utf-8"), hashlib.sha256
        ).hexdigest()


def build(entry: FacebookConfig, context: BuildContext) -> Built:
    """Access tokens inspected at ``debug_token_url``, and the code flow."""
    timeouts = context.aws.timeouts
    token = FacebookTokenProvider(
        name=entry.name,
        app_id=entry.app_id,
        app_secret=entry.app_secret.get_secret_value(),
        issuer=entry.issuer,
        debug_token_url=entry.debug_token_url,
        userinfo_url=entry.userinfo_url,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=entry.app_id,
        client_secret=static_secret(entry.app_secret),
        scopes=("public_profile", "email"),
        server=fixed(AuthorizationServer(entry.authorize_url, entry.token_url, (entry.issuer,))),
        verification=AccessTokenInspection(token),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=FacebookConfig, build=build)
