"""Orchestration: a verified principal becomes a mapped user, credentials and a session.

Everything here is built once at start-up (providers, mappers, vendors, clients) and
shared by every request.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from identity import audit, errors, telemetry
from identity.chime import AppInstanceUsers, MessagingEndpoint
from identity.config.document import BrokerConfig
from identity.config.models import ProviderBase
from identity.credential_cache import CredentialCache
from identity.mapping import ClaimMapper, app_instance_user_arn
from identity.models import Grant, MappedUser, Principal, VendedCredentials
from identity.providers.base import RedirectProvider, TokenProvider
from identity.providers.guest import GuestConfig, MeetingGuests, guest_display_name
from identity.providers.id_token import SingleUseNonces
from identity.providers.kinds import Providers
from identity.sealing import Sealer, token_hash
from identity.sessions import SessionManager, SessionRecord
from identity.store import Store
from identity.upstream_sessions import upstream_session_id
from identity.vending.base import Vendor, VendRequest
from identity.vending.sts import role_session_name

log = logging.getLogger("chime_broker.broker")


class Broker:
    """The broker's use cases, free of HTTP."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        store: Store,
        sealer: Sealer,
        providers: Providers,
        mappers: Mapping[str, ClaimMapper],
        vendors: Mapping[str, Vendor],
        app_instance_users: AppInstanceUsers | None,
        messaging_endpoint: MessagingEndpoint | None,
        clock: Callable[[], float],
    ) -> None:
        """Everything is built once by ``identity.wiring``."""
        self.config = config
        self.store = store
        self.clock = clock
        self.sealer = sealer
        self.sessions = SessionManager(
            store, sealer, session_lifetime=config.service.session_lifetime, clock=clock
        )
        self.nonces = SingleUseNonces(store, clock)
        self.credential_cache = CredentialCache(
            store, sealer, clock=clock, enabled=config.service.cache_credentials
        )
        self.token_providers: Mapping[str, TokenProvider] = providers.token
        self.redirect_providers: Mapping[str, RedirectProvider] = providers.redirect
        self.guests: Mapping[str, MeetingGuests] = providers.guests
        self.mappers = mappers
        self.vendors = vendors
        self.app_instance_users = app_instance_users
        self.messaging_endpoint = messaging_endpoint

    def map_user(self, provider: str, principal: Principal) -> MappedUser:
        """``principal`` mapped by ``provider``'s rules (``AccessDenied``,
        ``UnmappableIdentity`` when it cannot be)."""
        return self.mappers[provider].map(principal)

    def provider_config(self, name: str) -> ProviderBase:
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
        if not (provider_cfg.require_nonce and id_token is not None):
            return self.start_session(provider_cfg, principal, origin="token")
        spent = self.nonces.spend(principal, leeway=provider_cfg.leeway)
        try:
            return self.start_session(provider_cfg, principal, origin="token")
        except errors.BrokerError as error:
            # Nothing was issued: the app may retry with the same token.
            if error.status >= 500 or isinstance(error, errors.RateLimited):
                self.nonces.release(spent)
            raise

    def start_guest_session(
        self,
        provider_name: str,
        *,
        invite: str | None,
        display_name: str | None,
        client_address: str,
    ) -> Grant:
        """Admit a meeting guest (invite, or open and rate-limited), map, vend, and start a
        bearer session.  The user id comes from the provider's template only; the display
        name is the invite's ``name`` claim, else ``display_name``, else the mapped one."""
        provider_cfg = self.provider_config(provider_name)
        guests = self.guests.get(provider_name)
        if guests is None:
            raise errors.InvalidRequest(f"provider {provider_name!r} is not a guest provider")
        admission = guests.admit(invite, client_address=client_address)
        user = self.mappers[provider_name].map(admission.principal, random=admission.random)
        user = replace(
            user,
            display_name=guest_display_name(admission.principal, display_name, user.display_name),
        )
        try:
            return self.start_session(provider_cfg, admission.principal, origin="guest", user=user)
        except errors.BrokerError as error:
            # Nothing was issued: an invite spent on an AWS failure may be used again.
            if error.status >= 500 or isinstance(error, errors.RateLimited):
                guests.release(admission)
            raise

    def start_session(
        self,
        provider_cfg: ProviderBase,
        principal: Principal,
        *,
        origin: str,
        user: MappedUser | None = None,
        refresh_token: str | None = None,
        end_session_url: str | None = None,
        refresh_token_missing: bool = False,
    ) -> Grant:
        """Map ``principal`` (unless ``user`` is given already mapped), provision the app
        instance user, vend credentials, and open a session that can vend again.

        ``refresh_token`` (kept sealed) lets the session re-check the user with the IdP
        (``refresh_token_missing``: one was asked for and none came);
        ``end_session_url`` is what logout hands back."""
        if user is None:
            user = self.mappers[provider_cfg.name].map(principal)
        self._provision(provider_cfg, user)
        now = self.clock()
        lifetime = self.config.service.session_lifetime
        credentials = self._cached_or_vended(
            provider_cfg, user, principal, now=now, session_ends_at=now + lifetime, origin=origin
        )
        record = self._session_record(
            provider_cfg,
            principal,
            user,
            origin=origin,
            now=now,
            refresh_token=refresh_token,
            end_session_url=end_session_url,
            refresh_token_missing=refresh_token_missing,
        )
        token = self._create_session(record)
        # The audit record of the credentials that come with it says as much, at info.
        log.debug(
            "session started",
            extra={
                "fields": {"provider": provider_cfg.name, "user_id": user.user_id, "origin": origin}
            },
        )
        return self.grant(
            provider_cfg.name,
            user,
            credentials,
            session_token=token,
            session_expires_at=datetime.fromtimestamp(record.expires_at, UTC),
        )

    def open_browser_session(
        self,
        provider_cfg: ProviderBase,
        principal: Principal,
        *,
        refresh_token: str | None = None,
        end_session_url: str | None = None,
        refresh_token_missing: bool = False,
    ) -> tuple[str, SessionRecord]:
        """Map ``principal``, provision the app instance user and open a cookie session;
        nothing is vended until the SPA asks (``POST /v1/credentials``). Returns the new
        session token and its record."""
        user = self.mappers[provider_cfg.name].map(principal)
        self._provision(provider_cfg, user)
        record = self._session_record(
            provider_cfg,
            principal,
            user,
            origin="browser",
            now=self.clock(),
            refresh_token=refresh_token,
            end_session_url=end_session_url,
            refresh_token_missing=refresh_token_missing,
        )
        token = self._create_session(record)
        log.info(
            "session started",
            extra={
                "fields": {
                    "provider": provider_cfg.name,
                    "user_id": user.user_id,
                    "origin": "browser",
                }
            },
        )
        return token, record

    def _create_session(self, record: SessionRecord) -> str:
        """Store ``record`` as a new session; the session token. The record keeps the
        provider's subject and session id, which the provider's logouts name."""
        token = self.sessions.create(record)
        telemetry.current().session_started(record.origin)
        return token

    def describe_session(self, session_token: str | None) -> SessionRecord:
        """The live session of ``session_token``; ``Unauthenticated`` when there is none."""
        record = self.sessions.find(session_token)
        if record is None:
            raise errors.Unauthenticated("no broker session, or it has ended")
        return record

    def _provision(self, provider_cfg: ProviderBase, user: MappedUser) -> None:
        if self.app_instance_users is not None:
            # Before vending: credentials for a user Chime does not know are never issued.
            expiration = (
                provider_cfg.user_expiration_days if isinstance(provider_cfg, GuestConfig) else None
            )
            self.app_instance_users.ensure(user, expiration_days=expiration)

    def _session_record(
        self,
        provider_cfg: ProviderBase,
        principal: Principal,
        user: MappedUser,
        *,
        origin: str,
        now: float,
        refresh_token: str | None,
        end_session_url: str | None,
        refresh_token_missing: bool = False,
    ) -> SessionRecord:
        cognito = provider_cfg.exchange == "cognito"
        login_exp = principal.token_expires_at.timestamp() if principal.token_expires_at else None
        return SessionRecord(
            provider=provider_cfg.name,
            user_id=user.user_id,
            display_name=user.display_name,
            tags=dict(user.tags),
            issuer=principal.issuer,
            subject=principal.subject,
            created_at=now,
            expires_at=now + self.config.service.session_lifetime,
            origin=origin,
            login_key=principal.login_key if cognito else None,
            login_token=principal.login_token if cognito else None,
            login_token_expires_at=login_exp if cognito else None,
            refresh_token=refresh_token or None,
            rechecked_at=now if refresh_token else None,
            end_session_url=end_session_url,
            refresh_token_missing=refresh_token_missing and not refresh_token,
            upstream_session_id=upstream_session_id(provider_cfg.kind, principal.claims),
        )

    def refresh(self, session_token: str | None) -> Grant:
        """Fresh (or still fresh cached) credentials for a live session.

        Never after the session has ended; in ``cognito`` mode only while the upstream id
        token the session holds is still valid. A session holding a refresh token is
        re-checked with the IdP every ``service.recheck_interval`` (and whenever a
        ``cognito`` session's id token has run out); a refusal ends it.
        """
        record, prefetched = self.sessions.find_with(session_token, self._cache_keys)
        if record is None or session_token is None:
            raise errors.Unauthenticated("no broker session, or it has ended")
        provider_cfg = self.config.provider(record.provider)
        if provider_cfg is None:
            raise errors.Unauthenticated("the session's provider is no longer configured")
        now = self.clock()
        record = self._recheck(session_token, record, provider_cfg, now)
        if provider_cfg.exchange == "cognito" and (
            not record.login_token or (record.login_token_expires_at or 0) <= now
        ):
            raise errors.ReauthenticationRequired(
                "the identity provider's token has expired; sign in again"
            )
        user = MappedUser(
            provider=record.provider,
            user_id=record.user_id,
            display_name=record.display_name,
            tags=dict(record.tags),
        )
        principal = Principal(
            provider=record.provider,
            issuer=record.issuer,
            subject=record.subject,
            login_key=record.login_key,
            login_token=record.login_token,
        )
        credentials = self._cached_or_vended(
            provider_cfg,
            user,
            principal,
            now=now,
            session_ends_at=record.expires_at,
            origin=record.origin,
            prefetched=prefetched,
        )
        return self.grant(record.provider, user, credentials)

    def _cache_keys(self, record: SessionRecord) -> list[str]:
        """The credential cache entry a refresh of ``record`` reads, to be read together
        with the session's revocation markers."""
        provider_cfg = self.config.provider(record.provider)
        if provider_cfg is None or not self.credential_cache.enabled:
            return []
        return [self.user_cache_key(provider_cfg, record.user_id)]

    def _cached_or_vended(
        self,
        provider_cfg: ProviderBase,
        user: MappedUser,
        principal: Principal,
        *,
        now: float,
        session_ends_at: float,
        origin: str,
        prefetched: Mapping[str, bytes | None] | None = None,
    ) -> VendedCredentials:
        """The user's cached credentials when they suit a session ending at
        ``session_ends_at``; else freshly vended ones, which then become the cached ones.
        Either way counted and audited. ``prefetched``: store values already read."""
        key = self.user_cache_key(provider_cfg, user.user_id)
        identity = (
            (principal.login_key or "", principal.subject)
            if provider_cfg.exchange == "cognito"
            else ()
        )
        binding = self.credential_cache.binding(user.tags, identity)
        credentials = self.credential_cache.get(
            key, binding=binding, not_after=session_ends_at, prefetched=prefetched
        )
        reused = credentials is not None
        if credentials is None:
            remaining = int(session_ends_at - now)
            try:
                credentials = self.vend(provider_cfg, user, principal, max_duration=remaining)
            except errors.BrokerError as error:
                telemetry.current().vend(provider_cfg.name, provider_cfg.exchange, error.code)
                raise
            self.credential_cache.put(key, credentials, binding=binding)
        telemetry.current().vend(
            provider_cfg.name, provider_cfg.exchange, "reused" if reused else "vended"
        )
        sts = provider_cfg.exchange == "sts"
        audit.credentials_issued(
            provider=provider_cfg.name,
            user_id=user.user_id,
            exchange=provider_cfg.exchange,
            origin=origin,
            role_arn=self.config.role_arn(provider_cfg),
            source_identity=role_session_name(user.user_id) if sts else None,
            tags=user.tags,
            credentials=credentials,
            reused=reused,
            now=self.clock(),
        )
        return credentials

    def _recheck(
        self, session_token: str, record: SessionRecord, provider_cfg: ProviderBase, now: float
    ) -> SessionRecord:
        """Refresh at the IdP when due; the record as it stands afterwards."""
        provider = self.redirect_providers.get(record.provider)
        if not record.refresh_token or provider is None:
            return record
        last = record.rechecked_at if record.rechecked_at is not None else record.created_at
        login_ran_out = (
            provider_cfg.exchange == "cognito" and (record.login_token_expires_at or 0) <= now
        )
        if now - last < self.config.service.recheck_interval and not login_ran_out:
            return record
        # One re-check per session at a time: a rotated refresh token works only once.
        lock = "recheck:" + token_hash(session_token)
        if not self.store.set_if_absent(lock, b"1", 30):
            return record
        try:
            try:
                refreshed = provider.refresh(record.refresh_token)
                principal = refreshed.principal
                if principal is not None and principal.subject != record.subject:
                    raise errors.ReauthenticationRequired(
                        "the identity provider now names another user; sign in again",
                        log_detail="refreshed token has another subject",
                    )
            except errors.ReauthenticationRequired:
                with contextlib.suppress(errors.Unauthenticated):
                    self.end_session(session_token, ended_by="recheck_refused")
                raise
            record = record.model_copy(
                update={"refresh_token": refreshed.refresh_token, "rechecked_at": now}
            )
            if (
                provider_cfg.exchange == "cognito"
                and principal is not None
                and principal.login_token is not None
            ):
                expires = principal.token_expires_at
                record = record.model_copy(
                    update={
                        "login_token": principal.login_token,
                        "login_token_expires_at": (
                            expires.timestamp() if expires is not None else None
                        ),
                    }
                )
            if not self.sessions.update(session_token, record):
                # Logged out or revoked while the IdP answered: it stays ended.
                raise errors.Unauthenticated(
                    "no broker session, or it has ended",
                    log_detail="the session ended during its re-check",
                )
            log.info(
                "session re-checked",
                extra={"fields": {"provider": record.provider, "user_id": record.user_id}},
            )
        finally:
            self.store.delete(lock)
        return record

    def end_session(
        self, session_token: str | None, *, ended_by: audit.EndedBy = "logout"
    ) -> SessionRecord:
        """End the session (and drop its cached credentials); the ended record."""
        record = self.sessions.find(session_token)
        if (
            record is None
            or session_token is None
            or not self.sessions.end(session_token, ended_by=ended_by)
        ):
            raise errors.Unauthenticated("no broker session, or it has ended")
        provider_cfg = self.config.provider(record.provider)
        if provider_cfg is not None:
            self.credential_cache.forget(self.user_cache_key(provider_cfg, record.user_id))
        log.info(
            "session ended",
            extra={"fields": {"provider": record.provider, "user_id": record.user_id}},
        )
        return record

    def user_cache_key(self, provider_cfg: ProviderBase, user_id: str) -> str:
        """The credential cache key of ``user_id`` of ``provider_cfg`` (one per user and
        role, shared by the user's sessions)."""
        role = self.config.role_arn(provider_cfg) or ""
        return self.credential_cache.key(
            provider=provider_cfg.name, user_id=user_id, role=f"{provider_cfg.exchange}:{role}"
        )

    def vend(
        self,
        provider_cfg: ProviderBase,
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
            messaging_session_endpoint=(
                self.messaging_endpoint.url() if self.messaging_endpoint is not None else None
            ),
        )
