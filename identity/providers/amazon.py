"""``kind: amazon``: Login with Amazon.

Mobile apps present an access token, checked at ``tokeninfo_url`` (its ``aud`` must be one
of ``client_ids``) and read from the profile API. The browser login (when
``client_secret`` is set) is the code flow at Amazon's endpoints, whose access token is
inspected the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import Field, SecretStr

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

LOGIN_KEY: Final = "www.amazon.com"
"""The identity pool's ``Logins`` key for Login with Amazon."""
# Login with Amazon documents tokeninfo's ``exp`` as seconds remaining; a value this
# large can only be an absolute time, so it is read as one.
_EPOCH_SECONDS_FLOOR: Final = 1_000_000_000


class AmazonConfig(ProviderBase):
    """Login with Amazon: access tokens inspected at ``tokeninfo_url``."""

    nonce_capable: ClassVar[bool] = False

    kind: Literal["amazon"]
    client_ids: tuple[NonEmptyStr, ...] = Field(min_length=1)
    client_secret: SecretStr | None = None
    tokeninfo_url: SecureUrl = "https://api.amazon.com/auth/o2/tokeninfo"
    issuer: SecureUrl = "https://www.amazon.com"
    authorize_url: SecureUrl = "https://www.amazon.com/ap/oa"
    token_url: SecureUrl = "https://api.amazon.com/auth/o2/token"  # noqa: S105
    userinfo_url: SecureUrl | None = "https://api.amazon.com/user/profile"

    def endpoint_urls(self) -> list[tuple[Path, str]]:
        return self.urls("issuer", "authorize_url", "token_url", "userinfo_url", "tokeninfo_url")


class AmazonTokenProvider(AccessTokenProvider):
    """Login with Amazon access tokens, checked at ``tokeninfo`` and read from the
    profile API."""

    def __init__(
        self,
        *,
        name: str,
        client_ids: tuple[str, ...],
        issuer: str,
        tokeninfo_url: str,
        userinfo_url: str | None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, kind="amazon")
        self.client_ids = frozenset(client_ids)
        self.issuer = issuer
        self.tokeninfo_url = tokeninfo_url
        self.userinfo_url = userinfo_url
        self._api = InspectionClient(
            provider=name, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"AmazonTokenProvider(name={self._name!r}, client_ids={sorted(self.client_ids)!r})"

    def verify_access_token(self, access_token: str) -> Principal:
        """Known to tokeninfo, ``aud`` (or ``app_id``) one of ``client_ids``, not expired:
        the user's principal."""
        check_access_token_shape(access_token)
        info = self._api.get_json(
            self.tokeninfo_url, what="tokeninfo", params={"access_token": access_token}
        )
        granted = {v for v in (info.get("aud"), info.get("app_id")) if isinstance(v, str)}
        if not granted & self.client_ids:
            raise InvalidToken(
                "token was issued to another app",
                log_detail=f"tokeninfo: aud {short(info.get('aud'))}",
            )
        user_id = string(info, "user_id")
        if user_id is None:
            raise InvalidToken("token names no user", log_detail="tokeninfo: no user_id")
        now = self._clock()
        exp = info.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int):
            raise UpstreamError(
                f"{self._name}: tokeninfo answer is malformed",
                log_detail="tokeninfo: exp is not an integer",
            )
        expires_at = exp if exp >= _EPOCH_SECONDS_FLOOR else now + exp
        if expires_at <= now:
            raise InvalidToken("token expired", log_detail="tokeninfo: exp has passed")

        return Principal(
            provider=self._name,
            issuer=self.issuer,
            subject=user_id,
            claims=profile_claims(user_id, self._profile(access_token, user_id)),
            login_key=LOGIN_KEY,
            login_token=access_token,
            token_expires_at=expiry_time(expires_at, what="token expiry"),
        )

    def _profile(self, access_token: str, user_id: str) -> Mapping[str, Any]:
        if self.userinfo_url is None:
            return {}
        profile = self._api.get_json(
            self.userinfo_url,
            what="profile",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        if profile.get("user_id") != user_id:
            raise UpstreamError(
                f"{self._name}: profile does not match the token",
                log_detail="profile user_id differs from tokeninfo user_id",
            )
        return profile


def build(entry: AmazonConfig, context: BuildContext) -> Built:
    """Access tokens inspected at ``tokeninfo_url``; the code flow when ``client_secret``
    is set."""
    timeouts = context.aws.timeouts
    token = AmazonTokenProvider(
        name=entry.name,
        client_ids=entry.client_ids,
        issuer=entry.issuer,
        tokeninfo_url=entry.tokeninfo_url,
        userinfo_url=entry.userinfo_url,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    if entry.client_secret is None:
        return Built(token=token)
    redirect = CodeFlowProvider(
        name=entry.name,
        kind=entry.kind,
        client_id=entry.client_ids[0],
        client_secret=static_secret(entry.client_secret),
        scopes=("profile",),
        server=fixed(AuthorizationServer(entry.authorize_url, entry.token_url, (entry.issuer,))),
        verification=AccessTokenInspection(token),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    return Built(token=token, redirect=redirect)


KIND = ProviderKind(model=AmazonConfig, build=build)
