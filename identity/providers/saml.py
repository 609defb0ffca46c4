"""SAML 2.0 Web SSO, service-provider side, through python3-saml in strict mode.

One ``SamlServiceProvider`` per ``kind: saml`` entry (``build_saml_providers``). The
caller owns the browser transaction: it picks an opaque RelayState, calls
``authorization_request`` and stores the returned AuthnRequest id under that RelayState;
at the ACS it takes the id back (once) and calls ``finish``, which returns the verified
``Principal`` or raises a ``BrokerError``. Single logout goes through ``logout_request``,
``logout_response_url`` and ``end_session_url`` (the checks live in ``saml_logout``).

What ``finish`` enforces, beyond python3-saml's strict mode (``rejectDeprecatedAlgorithm``,
schema validation, one assertion per response, every signature present verified):

* before any signature is checked, the message checks of ``saml_checks`` (root, no
  encrypted elements, SHA-2 signatures that reference their parent);
* the signature the provider's ``signature`` asks for (``either``: the assertion's or the
  Response's; ``assertion``; ``response``) covering the one assertion;
* the Conditions window widened by the provider's ``leeway`` (not the library-wide
  ``ALLOWED_CLOCK_DRIFT``); SubjectConfirmationData and SessionNotOnOrAfter are checked
  by the library without skew;
* InResponseTo on the Response and on the bearer SubjectConfirmationData equal to the
  stored AuthnRequest id (absent for an allowed IdP-initiated sign-in), Recipient and a
  present Destination equal to the ACS URL exactly, every AudienceRestriction naming the
  SP, a bearer confirmation with NotOnOrAfter;
* each assertion ID accepted once until it expires (a replay cache in the ``Store``).

Identity comes only from the verified assertion, read through python3-saml's getters
after ``is_valid``. The library's reason for a refusal goes to ``log_detail`` only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as Saml2
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from identity.errors import BrokerError, InternalError, InvalidToken, UnmappableIdentity
from identity.models import Principal
from identity.providers.base import BuildContext, Built, ProviderKind, ProviderProblem
from identity.providers.saml_checks import (
    MAX_SAML_MESSAGE_BYTES,
    NS,
    SignaturePlacement,
    check_signature_placement,
    check_size,
    check_status,
    check_structure,
    decode,
    excerpt,
    refusal,
    saml_time,
)
from identity.providers.saml_config import RESERVED_CLAIMS, SamlConfig
from identity.providers.saml_logout import (
    LogoutBinding,
    LogoutRequestSeen,
    SloSettings,
    logout_request_url,
    logout_response_url,
    read_logout_request,
)
from identity.providers.saml_metadata import (
    FileMetadataSource,
    IdpMetadata,
    MetadataCache,
    MetadataSource,
    UrlMetadataSource,
    parse_idp_metadata,
)
from identity.providers.saml_sp import (
    DEFAULT_NAME_ID_FORMAT,
    NAME_ID_FORMATS,
    SP_METADATA_CACHE_SECONDS,
    check_sp_key_pair,
)
from identity.store import Store

logger = logging.getLogger(__name__)

MAX_SAML_RESPONSE_BYTES: Final = MAX_SAML_MESSAGE_BYTES
# SAML bindings 3.4.3: an SP's RelayState MUST NOT exceed 80 bytes.
MAX_RELAY_STATE_BYTES: Final = 80
SP_METADATA_TTL: Final = 3600.0

_V = OneLogin_Saml2_ValidationError


def prepare_request(
    url: str,
    post_data: Mapping[str, str],
    get_data: Mapping[str, str],
) -> dict[str, Any]:
    """The request as python3-saml wants it (``https``, ``http_host``, ``script_name``,
    ``get_data``, ``post_data``), with scheme, host, port and path taken from ``url``, the
    endpoint's URL below ``service.public_url``, and never from the request, so it holds
    behind any proxy. The port stays in ``http_host``; the deprecated ``server_port`` key
    is not used.
    """
    parts = urlsplit(url)
    return {
        "https": "on" if parts.scheme == "https" else "off",
        "http_host": parts.netloc,
        "script_name": parts.path,
        "get_data": dict(get_data),
        "post_data": dict(post_data),
    }


class _Response(OneLogin_Saml2_Response):  # type: ignore[misc]  # python3-saml is untyped
    """python3-saml's Response with the Conditions window widened by the provider's
    ``leeway`` instead of the process-wide ``ALLOWED_CLOCK_DRIFT``."""

    def __init__(self, settings: OneLogin_Saml2_Settings, response: str, *, leeway: int) -> None:
        super().__init__(settings, response)
        self.leeway = leeway

    def validate_timestamps(self, raise_exceptions: bool = False) -> bool:
        now = OneLogin_Saml2_Utils.now()
        try:
            for conditions in self._query_assertion("/saml:Conditions"):
                not_before = conditions.get("NotBefore")
                not_on_or_after = conditions.get("NotOnOrAfter")
                if not_before and saml_time(not_before) > now + self.leeway:
                    raise _V("assertion not yet valid", _V.ASSERTION_TOO_EARLY)
                if not_on_or_after and saml_time(not_on_or_after) + self.leeway <= now:
                    raise _V("assertion expired", _V.ASSERTION_EXPIRED)
        except (_V, InvalidToken):
            if raise_exceptions:
                raise
            return False
        return True


@dataclass(frozen=True)
class _IdpContext:
    """One version of the IdP's metadata and the python3-saml settings built from it."""

    metadata: IdpMetadata
    settings: OneLogin_Saml2_Settings


class SamlServiceProvider:
    """A SAML 2.0 SP for one IdP. Built once at start-up; safe for concurrent use.

    ``metadata_cache`` holds the IdP's metadata (see ``MetadataCache``). Raises
    ``ProviderProblem`` for an unusable SP key or certificate.
    """

    kind: Final = "saml"

    def __init__(
        self,
        *,
        name: str,
        acs_url: str,
        metadata_url: str,
        slo_url: str,
        sp_entity_id: str,
        metadata_source: MetadataSource,
        store: Store,
        leeway: int = 60,
        allow_idp_initiated: bool = False,
        sp_key: str | None = None,
        sp_cert: str | None = None,
        name_id_format: str = NAME_ID_FORMATS[DEFAULT_NAME_ID_FORMAT],
        signature: SignaturePlacement = "either",
        attributes: Mapping[str, str] | None = None,
        user_id_reads_name_id: bool = True,
        refresh_interval: float = 6 * 3600.0,
        retry_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (sp_key is None) != (sp_cert is None):
            raise ProviderProblem(("sp_key",), "sp_key and sp_cert go together")
        if sp_key is not None and sp_cert is not None:
            check_sp_key_pair(sp_key, sp_cert)
        self._name = name
        self.entity_id = sp_entity_id
        self.acs_url = acs_url
        self.slo_url = slo_url
        self.metadata_url = metadata_url
        self.allow_idp_initiated = allow_idp_initiated
        self._store = store
        self._leeway = leeway
        self._sp_key = sp_key
        self._sp_cert = sp_cert
        self._name_id_format = name_id_format
        self._signature = signature
        self._attributes = dict(attributes or {})
        self._user_id_reads_name_id = user_id_reads_name_id
        self._clock = clock
        self._sp_settings = self._settings(None)
        self._sp_metadata_lock = threading.Lock()
        self._sp_metadata: tuple[str, float] | None = None
        try:
            self.metadata()
        except InternalError as e:
            raise ProviderProblem(("sp_entity_id",), e.log_detail or e.detail) from None
        self.metadata_cache: MetadataCache[_IdpContext] = MetadataCache(
            metadata_source,
            self._idp_context,
            refresh_interval=refresh_interval,
            retry_interval=retry_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"SamlServiceProvider(name={self._name!r}, entity_id={self.entity_id!r})"

    @property
    def name(self) -> str:
        """The configured provider name (``providers[].name``)."""
        return self._name

    def ready(self) -> bool:
        """Whether the IdP's metadata is loaded (sign-ins can start)."""
        return self.metadata_cache.loaded

    def warm_up(self) -> None:
        """Load the IdP's metadata now if it is not held yet (a metadata URL is fetched
        here, at start-up of a serving broker; a failure is logged and retried)."""
        if not self.metadata_cache.loaded:
            self.metadata_cache.refresh()

    # ------------------------------------------------------------------ login

    def authorization_request(self, relay_state: str) -> tuple[str, str]:
        """A new AuthnRequest: the IdP URL to redirect the browser to (HTTP-Redirect
        binding, signed when the SP has a key) and the request's ID, which the caller
        stores under ``relay_state`` and hands back to ``finish``.

        ``relay_state`` is the caller's opaque transaction id, 1..80 bytes (ValueError
        otherwise). Raises ``UpstreamUnavailable`` while no IdP metadata is held.
        """
        if not relay_state or len(relay_state.encode("utf-8")) > MAX_RELAY_STATE_BYTES:
            raise ValueError(f"relay_state must be 1..{MAX_RELAY_STATE_BYTES} bytes")
        idp = self.metadata_cache.current()
        auth = OneLogin_Saml2_Auth(self._request_data({}), idp.settings)
        url = auth.login(return_to=relay_state)
        return str(url), str(auth.get_last_request_id())

    # ------------------------------------------------------------------ ACS

    def finish(
        self, saml_response_b64: str, *, request_id: str | None, relay_state: str | None
    ) -> Principal:
        """Verify the posted ``SAMLResponse`` and return the principal it asserts.

        ``request_id`` is the stored id of the AuthnRequest this response answers, or
        ``None`` for an IdP-initiated (unsolicited) response, which is refused unless the
        provider sets ``allow_idp_initiated``. A solicited response must come back with
        the caller's ``relay_state``; an unsolicited one may carry any (the caller checks
        it like ``return_to``).

        Raises ``PayloadTooLarge`` for a response over 1 MiB, ``AccessDenied`` when the
        IdP's status says it refused the user, ``InvalidToken`` for everything else that
        does not verify (including a replayed assertion), and ``UpstreamUnavailable``
        while no IdP metadata is held. The principal's ``issuer`` is the IdP's entity
        id, ``subject`` the NameID; ``claims`` hold ``name_id``, ``name_id_format``,
        ``session_index`` and every attribute by its ``attributes`` short name, by Name and
        by FriendlyName (one value: a string; several or none: a list; a short name is
        filled only from its attribute, a Name wins over an equal FriendlyName); the
        session ends at SessionNotOnOrAfter, else at the confirmation's NotOnOrAfter.
        """
        check_size(saml_response_b64)
        if request_id is None and not self.allow_idp_initiated:
            raise InvalidToken(
                "unsolicited response",
                log_detail=f"IdP-initiated sign-in is not allowed for provider {self._name!r}",
            )
        if request_id is not None and not relay_state:
            raise InvalidToken("missing RelayState", log_detail="solicited response without it")
        response, idp = self._validated(saml_response_b64, request_id)
        confirmed_until = self._check_binding(response.document, request_id)
        principal = self._principal(response, idp, confirmed_until)
        assertion = response.document.xpath("/samlp:Response/saml:Assertion", namespaces=NS)[0]
        self._accept_once(assertion.get("ID", ""), self._replay_window(assertion, confirmed_until))
        return principal

    def check_assertion(self, saml_response_b64: str) -> Principal:
        """``finish`` for a dry run (``explain``): no InResponseTo check, nothing marked used."""
        check_size(saml_response_b64)
        response, idp = self._validated(saml_response_b64, None)
        confirmed_until = self._check_binding(response.document, None, dry_run=True)
        return self._principal(response, idp, confirmed_until)

    def _validated(self, value: str, request_id: str | None) -> tuple[_Response, _IdpContext]:
        """The response checked in strict mode, and the IdP metadata it was checked with."""
        encoded, document = decode(value)
        check_structure(document)
        check_status(document)

        idp = self.metadata_cache.current()
        try:
            response = _Response(idp.settings, encoded, leeway=self._leeway)
            response.is_valid(
                self._request_data({"SAMLResponse": encoded}), request_id, raise_exceptions=True
            )
        except _V as e:
            raise refusal(e) from None
        except BrokerError:
            raise
        except Exception as e:  # python3-saml and xmlsec raise bare and assorted exceptions
            raise InvalidToken(
                "SAML response not accepted", log_detail=f"python3-saml: {excerpt(e)}"
            ) from e
        check_signature_placement(response.document, self._signature)
        return response, idp

    def _principal(self, response: _Response, idp: _IdpContext, confirmed_until: int) -> Principal:
        """Who the validated ``response`` names, read through python3-saml's getters."""
        try:
            name_id = response.get_nameid_data()
            session_index = response.get_session_index()
            session_until = response.get_session_not_on_or_after()
            by_name = response.get_attributes()
            by_friendly_name = response.get_friendlyname_attributes()
        except _V as e:
            raise refusal(e) from None
        except Exception as e:  # python3-saml raises bare exceptions
            raise InvalidToken(
                "SAML response not accepted", log_detail=f"python3-saml: {excerpt(e)}"
            ) from e
        subject = name_id.get("Value")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("assertion names no subject", log_detail="empty NameID")
        if name_id.get("Format") == NAME_ID_FORMATS["transient"] and self._user_id_reads_name_id:
            raise UnmappableIdentity(
                "the IdP sent a transient NameID, which changes at every sign-in: configure "
                "a persistent NameID at the IdP, or build map.user_id from a stable attribute",
                log_detail=f"transient NameID; provider {self._name!r} reads name_id",
            )
        claims = _claims(by_name, by_friendly_name, self._attributes)
        claims["name_id"] = subject
        if name_id.get("Format"):
            claims["name_id_format"] = name_id["Format"]
        if session_index:
            claims["session_index"] = session_index
        return Principal(
            provider=self._name,
            issuer=idp.metadata.entity_id,
            subject=subject,
            claims=claims,
            token_expires_at=datetime.fromtimestamp(session_until or confirmed_until, UTC),
        )

    def _check_binding(
        self, root: etree._Element, request_id: str | None, *, dry_run: bool = False
    ) -> int:
        """The checks python3-saml leaves loose (InResponseTo not in a ``dry_run``); returns
        the accepted bearer confirmation's NotOnOrAfter (Unix time)."""
        in_response_to = root.get("InResponseTo")
        if in_response_to != request_id and not dry_run:
            if request_id is not None and in_response_to is None:
                raise InvalidToken(
                    "unsolicited response",
                    log_detail=f"no InResponseTo; expected request {excerpt(request_id)}",
                )
            raise InvalidToken(
                "response to another request",
                log_detail=f"InResponseTo {excerpt(in_response_to)}, "
                f"expected {excerpt(request_id)}",
            )
        destination = root.get("Destination")
        if destination is not None and destination != self.acs_url:
            raise InvalidToken(
                "wrong destination", log_detail=f"Destination {excerpt(destination)}"
            )

        assertion = root.xpath("/samlp:Response/saml:Assertion", namespaces=NS)
        if len(assertion) != 1:
            raise InvalidToken("expected exactly one assertion", log_detail="after validation")
        restrictions = assertion[0].xpath("saml:Conditions/saml:AudienceRestriction", namespaces=NS)
        if not restrictions:
            raise InvalidToken("audience not accepted", log_detail="no AudienceRestriction")
        for restriction in restrictions:
            audiences = [a.text for a in restriction.xpath("saml:Audience", namespaces=NS)]
            if self.entity_id not in audiences:
                raise InvalidToken(
                    "audience not accepted", log_detail=f"Audience {excerpt(audiences)}"
                )

        now = OneLogin_Saml2_Utils.now()
        for data in assertion[0].xpath(
            "saml:Subject/saml:SubjectConfirmation[@Method=$bearer]/saml:SubjectConfirmationData",
            bearer=Saml2.CM_BEARER,
            namespaces=NS,
        ):
            not_on_or_after = data.get("NotOnOrAfter")
            if (
                data.get("Recipient") == self.acs_url
                and (dry_run or data.get("InResponseTo") == request_id)
                and not_on_or_after is not None
            ):
                until = saml_time(not_on_or_after)
                if until > now:
                    return until
        raise InvalidToken(
            "subject confirmation failed",
            log_detail=f"no current bearer confirmation for {self.acs_url} "
            f"in response to {excerpt(request_id)} with NotOnOrAfter",
        )

    def _replay_window(self, assertion: etree._Element, confirmed_until: int) -> float:
        """Seconds for which the assertion could still be accepted."""
        until = confirmed_until
        for conditions in assertion.xpath("saml:Conditions[@NotOnOrAfter]", namespaces=NS):
            until = max(until, saml_time(conditions.get("NotOnOrAfter")))
        return max(1.0, until + self._leeway - time.time())

    def _accept_once(self, assertion_id: str, ttl: float) -> None:
        digest = hashlib.sha256(f"{self._name}\0{assertion_id}".encode()).hexdigest()
        if not self._store.set_if_absent(f"saml-assertion:{digest}", b"1", ttl):
            raise InvalidToken(
                "assertion already used", log_detail=f"replayed assertion {digest[:16]}"
            )

    # ------------------------------------------------------------------ single logout

    def logout_request(
        self, binding: LogoutBinding, params: Mapping[str, str], query_string: str
    ) -> LogoutRequestSeen:
        """The verified IdP-initiated LogoutRequest (see ``saml_logout``)."""
        idp = self.metadata_cache.current()
        request_data = prepare_request(
            self.slo_url,
            params if binding == "post" else {},
            params if binding == "redirect" else {},
        )
        request_data.update(query_string=query_string, validate_signature_from_qs=True)
        return read_logout_request(
            provider=self._name,
            binding=binding,
            params=params,
            request_data=request_data,
            settings=idp.settings,
            idp_entity_id=idp.metadata.entity_id,
            idp_certificates=idp.metadata.signing_certificates,
            slo_url=self.slo_url,
            leeway=self._leeway,
            store=self._store,
        )

    def logout_response_url(
        self, request: LogoutRequestSeen, relay_state: str | None
    ) -> str | None:
        """The IdP's SLO response URL with a LogoutResponse to ``request`` (signed when the
        SP has a key), or None when the IdP has no HTTP-Redirect SingleLogoutService."""
        idp = self.metadata_cache.current()
        if idp.metadata.slo_url is None:
            return None
        return logout_response_url(
            idp.settings,
            prepare_request(self.slo_url, {}, {}),
            in_response_to=request.id,
            relay_state=relay_state,
            signed=self._sp_key is not None,
        )

    def end_session_url(
        self, *, name_id: str, name_id_format: str | None, session_index: str | None
    ) -> str | None:
        """The IdP's SLO URL with a signed LogoutRequest for ``name_id`` (and
        ``session_index``); None without an SP key, IdP metadata or an HTTP-Redirect
        SingleLogoutService at the IdP."""
        if self._sp_key is None or not self.metadata_cache.loaded:
            return None
        idp = self.metadata_cache.current()
        if idp.metadata.slo_url is None:
            return None
        return logout_request_url(
            idp.settings,
            prepare_request(self.slo_url, {}, {}),
            name_id=name_id,
            name_id_format=name_id_format,
            session_index=session_index,
        )

    # ------------------------------------------------------------------ SP metadata

    def metadata(self) -> str:
        """The SP metadata XML (entity id, ACS URL, NameID format, signing certificate
        when the SP has a key; then also signed), checked with python3-saml's
        ``validate_metadata``. It is valid for two days (``validUntil``), may be cached for
        one (``cacheDuration``) and is rebuilt every hour."""
        with self._sp_metadata_lock:
            cached = self._sp_metadata
            if cached is not None and self._clock() - cached[1] < SP_METADATA_TTL:
                return cached[0]
            try:
                built = self._sp_settings.get_sp_metadata()
            except OneLogin_Saml2_Error as e:
                raise InternalError(log_detail=f"SP metadata cannot be built: {e}") from None
            xml = built.decode("utf-8") if isinstance(built, bytes) else str(built)
            errors = self._sp_settings.validate_metadata(xml)
            if errors:
                raise InternalError(log_detail=f"SP metadata does not validate: {errors}")
            self._sp_metadata = (xml, self._clock())
            return xml

    # ------------------------------------------------------------------ settings

    def _request_data(self, post_data: Mapping[str, str]) -> dict[str, Any]:
        return prepare_request(self.acs_url, post_data, {})

    def _idp_context(self, document: bytes) -> _IdpContext:
        metadata = parse_idp_metadata(document)
        if metadata.want_authn_requests_signed and self._sp_key is None:
            logger.warning(
                "SAML provider %s: the IdP wants signed AuthnRequests; set sp_key and sp_cert",
                self._name,
            )
        return _IdpContext(metadata=metadata, settings=self._settings(metadata))

    def _settings(self, idp: IdpMetadata | None) -> OneLogin_Saml2_Settings:
        signing = self._sp_key is not None
        settings: dict[str, Any] = {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": self.entity_id,
                "assertionConsumerService": {
                    "url": self.acs_url,
                    "binding": Saml2.BINDING_HTTP_POST,
                },
                "singleLogoutService": {
                    "url": self.slo_url,
                    "binding": Saml2.BINDING_HTTP_REDIRECT,
                },
                "NameIDFormat": self._name_id_format,
                "x509cert": self._sp_cert or "",
                "privateKey": self._sp_key or "",
            },
            "security": {
                "authnRequestsSigned": signing,
                "signMetadata": signing,
                "metadataCacheDuration": SP_METADATA_CACHE_SECONDS,
                "logoutRequestSigned": signing,
                "logoutResponseSigned": signing,
                # Signatures of Responses: python3-saml verifies every one present and
                # check_signature_placement requires the configured one.
                "wantMessagesSigned": self._signature == "response",
                # The SP metadata asks IdPs to sign assertions unless only Responses count.
                "wantAssertionsSigned": self._signature == "assertion"
                or (idp is None and self._signature == "either"),
                "wantAssertionsEncrypted": False,
                "wantNameIdEncrypted": False,
                "wantNameId": True,
                # NameID-only IdPs are common; the mapping decides which claims it needs.
                "wantAttributeStatement": False,
                "requestedAuthnContext": False,
                "failOnAuthnContextMismatch": False,
                "rejectDeprecatedAlgorithm": True,
                # Repeated Names or FriendlyNames merge into one list instead of failing.
                "allowRepeatAttributeName": True,
                "signatureAlgorithm": Saml2.RSA_SHA256,
                "digestAlgorithm": Saml2.SHA256,
                # URLs come from the validated config; intranet hosts may have one label.
                "allowSingleLabelDomains": True,
            },
        }
        if idp is not None:
            settings["idp"] = {
                "entityId": idp.entity_id,
                "singleSignOnService": {
                    "url": idp.sso_url,
                    "binding": Saml2.BINDING_HTTP_REDIRECT,
                },
                "x509certMulti": {"signing": list(idp.signing_certificates)},
            }
            if idp.slo_url is not None:
                settings["idp"]["singleLogoutService"] = {
                    "url": idp.slo_url,
                    "responseUrl": idp.slo_response_url,
                    "binding": Saml2.BINDING_HTTP_REDIRECT,
                }
        try:
            return SloSettings(settings, sp_validation_only=idp is None)
        except OneLogin_Saml2_Error as e:
            if idp is None:
                raise ProviderProblem(("sp_entity_id",), f"python3-saml refuses it: {e}") from None
            raise ValueError(f"python3-saml refuses the IdP metadata: {e}") from None


def _claims(
    by_name: Mapping[str, list[Any]],
    by_friendly_name: Mapping[str, list[Any]],
    aliases: Mapping[str, str],
) -> dict[str, Any]:
    """Every attribute by its short name from ``aliases``, by Name and by FriendlyName (one
    value: a string; several or none: a list; a Name wins over a FriendlyName). A short
    name is filled only from its own attribute, never from a namesake."""
    claims: dict[str, Any] = {}
    aliased = {short: by_name[name] for short, name in aliases.items() if name in by_name}
    for attributes in (aliased, by_name, by_friendly_name):
        for key, values in attributes.items():
            if key in RESERVED_CLAIMS or key in claims:
                continue
            if key in aliases and attributes is not aliased:
                continue
            texts = [text for text in map(_attribute_text, values) if text is not None]
            claims[key] = texts[0] if len(texts) == 1 else texts
    return claims


def _attribute_text(value: Any) -> str | None:
    """A value as python3-saml returns it: text, or a nested NameID as a dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        name_id = value.get("NameID")
        if isinstance(name_id, dict) and isinstance(name_id.get("value"), str):
            return str(name_id["value"])
    return None


# ---------------------------------------------------------------------------- building


def build_saml(
    entry: SamlConfig,
    context: BuildContext,
    *,
    session: requests.Session | None = None,
) -> SamlServiceProvider:
    """The SP for one ``kind: saml`` entry, with the IdP metadata loaded now.

    A metadata file that cannot be read or used raises ``ProviderProblem``; a metadata
    URL is not fetched here: the first sign-in fetches it, and a failure is logged and
    retried (``finish`` and ``authorization_request`` raise ``UpstreamUnavailable`` until
    a good copy arrives).
    """
    source: MetadataSource
    if entry.idp_metadata_file is not None:
        source = FileMetadataSource(entry.idp_metadata_file)
    elif entry.idp_metadata_url is not None:
        timeouts = context.aws.timeouts
        source = UrlMetadataSource(
            entry.idp_metadata_url,
            session=session,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
        )
    else:
        raise ProviderProblem(("idp_metadata_file",), "required (or idp_metadata_url)")
    sp = SamlServiceProvider(
        name=entry.name,
        acs_url=context.endpoints.acs_url(entry.name),
        metadata_url=context.endpoints.metadata_url(entry.name),
        slo_url=context.endpoints.slo_url(entry.name),
        sp_entity_id=entry.sp_entity_id,
        metadata_source=source,
        store=context.store,
        leeway=entry.leeway,
        allow_idp_initiated=entry.allow_idp_initiated,
        sp_key=entry.sp_key.get_secret_value() if entry.sp_key is not None else None,
        sp_cert=entry.sp_cert,
        name_id_format=NAME_ID_FORMATS[entry.name_id_format],
        signature=entry.signature,
        attributes=entry.attributes,
        user_id_reads_name_id="name_id" in entry.user_id_template.fields,
    )
    if entry.idp_metadata_file is not None and not sp.metadata_cache.refresh():
        raise ProviderProblem(("idp_metadata_file",), sp.metadata_cache.last_error or "unusable")
    return sp


def build(entry: SamlConfig, context: BuildContext) -> Built:
    """The service provider of one IdP."""
    return Built(saml=build_saml(entry, context))


KIND = ProviderKind(model=SamlConfig, build=build)
