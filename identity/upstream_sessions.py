"""Upstream logouts: an identity provider announcing that its own session, or its user, has
signed out ends the broker sessions that stand on it.

Every broker session keeps, from its login, the provider's ``subject`` and the provider's
own session id (``SessionRecord.upstream_session_id``: OIDC ``sid``, SAML
``SessionIndex``). A verified logout from the provider writes one "not before" marker
(``identity.revocation``) for that session id, or for that subject, and every broker
sharing the store refuses the covered sessions from then on: a login writes nothing for
this, and a session lookup reads these markers in the same round trip as the others.

``end_upstream_session(broker, provider, session_id)`` answers OIDC Back-Channel Logout
with a ``sid`` and each SAML ``SessionIndex``; ``end_upstream_subject(broker, provider,
subject)`` a logout naming only the user (OIDC ``sub``, SAML NameID), whatever user id the
subject was mapped to. Both are safe to call again, and sessions opened after them live on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from identity.config.document import BrokerConfig
from identity.sessions import SessionManager

log = logging.getLogger("chime_broker.upstream_sessions")

# The claim that holds the provider's session id, by provider kind (default: OIDC ``sid``).
_SESSION_ID_CLAIM: Final[Mapping[str, str]] = {"saml": "session_index"}
_DEFAULT_SESSION_ID_CLAIM: Final = "sid"
# Longer values are not session ids any provider issues; they are not recorded.
MAX_UPSTREAM_ID_LENGTH: Final = 1024


def upstream_session_id(kind: str, claims: Mapping[str, Any]) -> str | None:
    """The identity provider's own session id in a login's verified ``claims`` (``sid``;
    for ``kind: saml`` the ``session_index``), or None when it sends none."""
    value = claims.get(_SESSION_ID_CLAIM.get(kind, _DEFAULT_SESSION_ID_CLAIM))
    if isinstance(value, str) and 0 < len(value) <= MAX_UPSTREAM_ID_LENGTH:
        return value
    return None


class UpstreamLogoutTarget(Protocol):
    """What ending upstream sessions needs of ``identity.broker.Broker``."""

    config: BrokerConfig
    sessions: SessionManager
    clock: Callable[[], float]


def end_upstream_session(broker: UpstreamLogoutTarget, provider: str, session_id: str) -> None:
    """End the broker sessions opened under the upstream ``session_id`` of ``provider``."""
    broker.sessions.revocations.revoke_upstream_session(
        provider, session_id, at=broker.clock(), ttl=broker.config.service.session_lifetime
    )
    log.info("upstream session ended", extra={"fields": {"provider": provider}})


def end_upstream_subject(broker: UpstreamLogoutTarget, provider: str, subject: str) -> None:
    """End every broker session of the upstream ``subject`` of ``provider``."""
    broker.sessions.revocations.revoke_upstream_subject(
        provider, subject, at=broker.clock(), ttl=broker.config.service.session_lifetime
    )
    log.info("upstream subject signed out", extra={"fields": {"provider": provider}})
