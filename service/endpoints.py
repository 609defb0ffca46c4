"""The broker's own URLs, all below ``service.public_url`` and never from the Host header.

The route paths are defined here once: the blueprints mount them, and the domain gets the
absolute URLs (callback, ACS, SP metadata) from an ``Endpoints`` built from ``public_url``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

API: Final = "/v1"
LOGIN: Final = "/login/<provider>"
CALLBACK: Final = "/callback/<provider>"
BACKCHANNEL_LOGOUT: Final = "/backchannel-logout/<provider>"
SAML: Final = API + "/saml"
SAML_ACS: Final = "/<provider>/acs"
SAML_METADATA: Final = "/<provider>/metadata"
SAML_SLO: Final = "/<provider>/slo"


@dataclass(frozen=True)
class Endpoints:
    """Absolute URLs of the broker's endpoints for ``public_url``."""

    public_url: str

    def _url(self, prefix: str, route: str, provider: str) -> str:
        return self.public_url.rstrip("/") + prefix + route.replace("<provider>", provider)

    def login_url(self, provider: str) -> str:
        return self._url(API, LOGIN, provider)

    def callback_url(self, provider: str) -> str:
        return self._url(API, CALLBACK, provider)

    def backchannel_logout_url(self, provider: str) -> str:
        return self._url(API, BACKCHANNEL_LOGOUT, provider)

    def acs_url(self, provider: str) -> str:
        return self._url(SAML, SAML_ACS, provider)

    def metadata_url(self, provider: str) -> str:
        return self._url(SAML, SAML_METADATA, provider)

    def slo_url(self, provider: str) -> str:
        return self._url(SAML, SAML_SLO, provider)
