"""Orchestration: a verified principal becomes a mapped user, credentials and a session.

Everything here is built once at start-up (providers, mappers, vendors, clients) and
shared by every request.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from identity import errors
from identity.aws import AwsClients
from identity.config import BrokerConfig, ProviderConfig
from identity.mapping import ClaimMapper, app_instance_user_arn, build_mappers
from identity.models import MappedUser, Principal, VendedCredentials
from identity.providers.base import TokenProvider
from identity.providers.registry import build_token_providers
from identity.sealing import Sealer
from identity.sessions import SessionManager, SessionRecord
from identity.store import Store
from identity.vending.base import Vendor, VendRequest
from identity.vending.registry import build_vendors

log = logging.getLogger("chime_broker.broker")


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


class Broker:
    """The broker's use cases, free of HTTP."""

    def __init__(
        self,
        config: BrokerConfig,
        store: Store,
        *,
        clients: AwsClients | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clients = clients if clients is not None else AwsClients(config)
        self.clock = clock
        secret = config.service.secret_key
        # demo mode may run without a secret: a per-process one is enough for memory://
        self.sealer = Sealer(
            secret.get_secret_value() if secret is not None else secrets.token_hex(32)
        )
        self.sessions = SessionManager(store, self.sealer, clock=clock)
        self.token_providers: Mapping[str, TokenProvider] = build_token_providers(config)
        self.mappers: Mapping[str, ClaimMapper] = build_mappers(config)
        self.vendors: Mapping[str, Vendor] = build_vendors(config, self.clients, store)

    def provider_config(self, name: str) -> ProviderConfig:
        found = self.config.provider(name)
        if found is None:
            raise errors.UnknownProvider(f"no provider named {name!r}")
        return found

    def exchange_token(
        self,
        provider_name: str,
        *,
        id_token: str | None = None,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> Grant:
        """Verify a mobile app's token, map it, vend, and start a bearer session."""
        provider_cfg = self.provider_config(provider_name)
        provider = self.token_providers.get(provider_name)
        if provider is None:
            raise errors.InvalidRequest(f"provider {provider_name!r} does not take tokens")
        if id_token is not None:
            if not provider.accepts_id_token:
                raise errors.InvalidRequest(f"provider {provider_name!r} takes an access_token")
            principal = provider.verify_id_token(id_token, nonce=nonce)
        elif access_token is not None:
            if not provider.accepts_access_token:
                raise errors.InvalidRequest(f"provider {provider_name!r} takes an id_token")
            principal = provider.verify_access_token(access_token)
        else:
            raise errors.InvalidRequest("one of id_token or access_token is required")
        return self.start_session(provider_cfg, principal, origin="token")

    def start_session(
        self, provider_cfg: ProviderConfig, principal: Principal, *, origin: str
    ) -> Grant:
        """Map ``principal``, vend credentials, and open a session that can vend again."""
        user = self.mappers[provider_cfg.name].map(principal)
        now = self.clock()
        lifetime = self.config.service.session_lifetime
        credentials = self.vend(provider_cfg, user, principal, max_duration=lifetime)
        login_exp = principal.token_expires_at.timestamp() if principal.token_expires_at else None
        record = SessionRecord(
            provider=provider_cfg.name,
            user_id=user.user_id,
            display_name=user.display_name,
            tags=dict(user.tags),
            issuer=principal.issuer,
            subject=principal.subject,
            created_at=now,
            expires_at=now + lifetime,
            origin=origin,
            login_key=principal.login_key if provider_cfg.exchange == "cognito" else None,
            login_token=principal.login_token if provider_cfg.exchange == "cognito" else None,
            login_token_expires_at=login_exp if provider_cfg.exchange == "cognito" else None,
        )
        token = self.sessions.create(record)
        log.info(
            "session started",
            extra={"fields": {"provider": provider_cfg.name, "user_id": user.user_id,
                              "origin": origin}},
        )
        return self.grant(
            provider_cfg.name,
            user,
            credentials,
            session_token=token,
            session_expires_at=datetime.fromtimestamp(record.expires_at, UTC),
        )

    def vend(
        self,
        provider_cfg: ProviderConfig,
        user: MappedUser,
        principal: Principal,
        *,
        max_duration: int | None,
    ) -> VendedCredentials:
        vendor = self.vendors[provider_cfg.exchange]
        return vendor.vend(
            VendRequest(
                provider=provider_cfg, user=user, principal=principal, max_duration=max_duration
            )
        )

    def grant(
        self,
        provider: str,
        user: MappedUser,
        credentials: VendedCredentials,
        *,
        session_token: str | None = None,
        session_expires_at: datetime | None = None,
    ) -> Grant:
        app_instance_arn = self.config.chime.app_instance_arn
        return Grant(
            provider=provider,
            user=user,
            credentials=credentials,
            app_instance_arn=app_instance_arn,
            app_instance_user_arn=app_instance_user_arn(app_instance_arn, user.user_id),
            region=self.config.aws.region,
            session_token=session_token,
            session_expires_at=session_expires_at,
        )
