"""SAML IdP metadata: where it comes from, what the broker reads from it, how it is kept.

``parse_idp_metadata`` reads one IdP's entity id, HTTP-Redirect SSO URL, HTTP-Redirect
single logout URLs (when it has them) and signing certificates from a metadata document
(parsed with python3-saml's hardened parser: no DTDs, no entities, no network).
``FileMetadataSource`` and ``UrlMetadataSource`` fetch the document; ``MetadataCache``
keeps the last good copy, refreshes it when it is due and keeps serving that copy when a
refresh fails.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from cryptography import x509
from lxml import etree
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from identity.errors import UpstreamUnavailable
from identity.http import read_capped, upstream_session

logger = logging.getLogger(__name__)

NS_MD: Final = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_DS: Final = "http://www.w3.org/2000/09/xmldsig#"
BINDING_HTTP_REDIRECT: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
SAML2_PROTOCOL: Final = "urn:oasis:names:tc:SAML:2.0:protocol"
MAX_METADATA_BYTES: Final = 1024 * 1024

_NS: Final = {"md": NS_MD, "ds": NS_DS}
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


class MetadataError(ValueError):
    """A metadata document the broker cannot use; the message says why."""


class MetadataUnavailable(Exception):
    """The metadata document could not be read or fetched; the message says why."""


@dataclass(frozen=True)
class IdpMetadata:
    """What the broker takes from an IdP's metadata.

    ``signing_certificates`` are base64 DER X.509 certificates (every one is trusted, so
    an IdP can publish its next key before it rotates).
    """

    entity_id: str
    sso_url: str
    signing_certificates: tuple[str, ...]
    want_authn_requests_signed: bool
    slo_url: str | None = None
    slo_response_url: str | None = None


def parse_idp_metadata(document: bytes) -> IdpMetadata:
    """Read one IdP from a metadata document.

    The document is an ``md:EntityDescriptor`` or an ``md:EntitiesDescriptor`` holding
    exactly one entity with a SAML 2.0 ``md:IDPSSODescriptor``. That descriptor must
    offer an HTTP-Redirect SingleSignOnService on https (plain http only on a loopback
    host) and at least one signing certificate (a KeyDescriptor without
    ``use="encryption"``). A ``validUntil`` in the past makes the document unusable.
    Raises ``MetadataError`` saying what is wrong.
    """
    try:
        root = OneLogin_Saml2_XML.to_etree(document)
    except (etree.LxmlError, ValueError) as e:
        raise MetadataError(f"not a well-formed XML document without DTD: {e}") from None
    if root.tag not in (f"{{{NS_MD}}}EntityDescriptor", f"{{{NS_MD}}}EntitiesDescriptor"):
        raise MetadataError(f"the root element is {root.tag}, not md:EntityDescriptor")
    _check_valid_until(root)

    entities = [
        entity
        for entity in root.xpath("descendant-or-self::md:EntityDescriptor", namespaces=_NS)
        if _idp_descriptors(entity)
    ]
    if len(entities) != 1:
        raise MetadataError(
            f"expected exactly one entity with an IDPSSODescriptor, found {len(entities)}"
        )
    entity = entities[0]
    _check_valid_until(entity)
    entity_id = entity.get("entityID") or ""
    if not entity_id.strip():
        raise MetadataError("the EntityDescriptor has no entityID")
    descriptors = _idp_descriptors(entity)
    if len(descriptors) != 1:
        raise MetadataError("the entity has more than one SAML 2.0 IDPSSODescriptor")
    descriptor = descriptors[0]
    _check_valid_until(descriptor)
    slo = _slo_urls(descriptor)

    return IdpMetadata(
        entity_id=entity_id,
        sso_url=_sso_url(descriptor),
        signing_certificates=_signing_certificates(descriptor),
        want_authn_requests_signed=descriptor.get("WantAuthnRequestsSigned") in ("true", "1"),
        slo_url=slo[0] if slo else None,
        slo_response_url=slo[1] if slo else None,
    )


def _idp_descriptors(entity: etree._Element) -> list[etree._Element]:
    return [
        node
        for node in entity.xpath("md:IDPSSODescriptor", namespaces=_NS)
        if SAML2_PROTOCOL in (node.get("protocolSupportEnumeration") or "").split()
    ]


def _check_valid_until(node: etree._Element) -> None:
    valid_until = node.get("validUntil")
    if valid_until is None:
        return
    try:
        expires = OneLogin_Saml2_Utils.parse_SAML_to_time(valid_until)
    except Exception as e:  # python3-saml raises a bare Exception for a bad time
        raise MetadataError(f"validUntil {valid_until!r} is not a SAML time") from e
    if expires <= time.time():
        raise MetadataError(f"the metadata expired at {valid_until}")


def _sso_url(descriptor: etree._Element) -> str:
    services = descriptor.xpath(
        "md:SingleSignOnService[@Binding=$binding]",
        binding=BINDING_HTTP_REDIRECT,
        namespaces=_NS,
    )
    if not services:
        raise MetadataError("no SingleSignOnService with the HTTP-Redirect binding")
    return _secure_url("SingleSignOnService Location", services[0].get("Location") or "")


def _slo_urls(descriptor: etree._Element) -> tuple[str, str] | None:
    """The HTTP-Redirect SingleLogoutService's Location and ResponseLocation (default:
    the Location), or None when the IdP offers none."""
    services = descriptor.xpath(
        "md:SingleLogoutService[@Binding=$binding]",
        binding=BINDING_HTTP_REDIRECT,
        namespaces=_NS,
    )
    if not services:
        return None
    location = _secure_url("SingleLogoutService Location", services[0].get("Location") or "")
    response = services[0].get("ResponseLocation")
    if response is None:
        return location, location
    return location, _secure_url("SingleLogoutService ResponseLocation", response)


def _secure_url(what: str, location: str) -> str:
    try:
        parts = urlsplit(location)
    except ValueError:
        raise MetadataError(f"{what} {location!r} is not a URL") from None
    secure = parts.scheme == "https" or (
        parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
    )
    if not secure or not parts.hostname:
        raise MetadataError(
            f"{what} {location!r} must be an https URL (plain http only on a loopback host)"
        )
    return location


def _signing_certificates(descriptor: etree._Element) -> tuple[str, ...]:
    found: list[str] = []
    for key_descriptor in descriptor.xpath("md:KeyDescriptor", namespaces=_NS):
        if key_descriptor.get("use", "signing") != "signing":
            continue
        for node in key_descriptor.xpath(
            "ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=_NS
        ):
            text = "".join((OneLogin_Saml2_XML.element_text(node) or "").split())
            try:
                x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as e:
                raise MetadataError(f"a signing X509Certificate does not parse: {e}") from None
            if text not in found:
                found.append(text)
    if not found:
        raise MetadataError("the IDPSSODescriptor publishes no signing certificate")
    return tuple(found)


# --------------------------------------------------------------------------- sources


class MetadataSource(Protocol):
    """Where a metadata document comes from."""

    @property
    def location(self) -> str:
        """The file path or URL, for logs and config problems."""
        ...

    def read(self) -> bytes:
        """The document; raises ``MetadataUnavailable`` saying why it could not be read."""
        ...


class FileMetadataSource:
    """A metadata file on local disk (``idp_metadata_file``)."""

    def __init__(self, path: str, *, max_bytes: int = MAX_METADATA_BYTES) -> None:
        self._path = path
        self._max_bytes = max_bytes

    @property
    def location(self) -> str:
        return self._path

    def read(self) -> bytes:
        try:
            with open(self._path, "rb") as file:
                document = file.read(self._max_bytes + 1)
        except OSError as e:
            raise MetadataUnavailable(f"cannot read {self._path}: {e.strerror or e}") from None
        if len(document) > self._max_bytes:
            raise MetadataUnavailable(f"{self._path} is over {self._max_bytes} bytes")
        return document


class UrlMetadataSource:
    """A metadata document fetched with GET from ``url`` (``idp_metadata_url``): https,
    or plain http on a loopback host. Redirects are not followed."""

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_bytes: int = MAX_METADATA_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if not (
            parts.scheme == "https"
            or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS)
        ):
            raise ValueError(f"{url!r}: metadata URLs must be https (plain http only on loopback)")
        self._url = url
        self._session = (
            session
            if session is not None
            else upstream_session(pool_maxsize=2, operation="saml_metadata")
        )
        self._timeouts = (connect_timeout, read_timeout)
        self._max_bytes = max_bytes

    @property
    def location(self) -> str:
        return self._url

    def read(self) -> bytes:
        try:
            with self._session.get(
                self._url,
                timeout=self._timeouts,
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/samlmetadata+xml, application/xml, text/xml"},
            ) as response:
                if response.status_code != 200:
                    raise MetadataUnavailable(f"{self._url} answered HTTP {response.status_code}")
                document = read_capped(response, self._max_bytes)
        except requests.Timeout:
            raise MetadataUnavailable(f"{self._url} timed out") from None
        except requests.RequestException as e:
            raise MetadataUnavailable(f"{self._url} unreachable: {type(e).__name__}") from None
        if document is None:
            raise MetadataUnavailable(f"{self._url} is over {self._max_bytes} bytes")
        return document


# --------------------------------------------------------------------------- cache

T = TypeVar("T")


class MetadataCache(Generic[T]):
    """The last good ``parse(source.read())``, refreshed every ``refresh_interval`` s.

    ``current()`` refreshes when the copy is due, in the calling thread, while other
    threads keep using the copy they have. A failed read or parse is logged and keeps the
    last good copy; the next attempt waits ``retry_interval`` s. With no good copy yet,
    ``current()`` raises ``UpstreamUnavailable`` (``retry_after`` set). ``parse`` raises
    ``ValueError`` for a document it refuses.
    """

    def __init__(
        self,
        source: MetadataSource,
        parse: Callable[[bytes], T],
        *,
        refresh_interval: float = 6 * 3600.0,
        retry_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_interval <= 0 or retry_interval <= 0:
            raise ValueError("refresh_interval and retry_interval must be positive")
        self._source = source
        self._parse = parse
        self._refresh_interval = refresh_interval
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._next_attempt: float | None = None
        self._last_error: str | None = None

    @property
    def loaded(self) -> bool:
        """Whether a good copy is held."""
        return self._value is not None

    @property
    def last_error(self) -> str | None:
        """Why the latest attempt failed, or ``None`` after a success."""
        return self._last_error

    def refresh(self) -> bool:
        """Read and parse the document now; True when it replaced the held copy."""
        with self._lock:
            return self._refresh_locked()

    def current(self) -> T:
        """The held copy, refreshed first when due (see the class docstring)."""
        value = self._value
        if value is not None:
            # Whoever takes the lock refreshes; the others go on with the copy they have.
            if self._due() and self._lock.acquire(blocking=False):
                try:
                    if self._due():
                        self._refresh_locked()
                finally:
                    self._lock.release()
            held = self._value
            return held if held is not None else value
        with self._lock:
            if self._value is None and self._due():
                self._refresh_locked()
            held = self._value
            if held is None:
                raise self._unavailable()
            return held

    def _due(self) -> bool:
        return self._next_attempt is None or self._clock() >= self._next_attempt

    def _unavailable(self) -> UpstreamUnavailable:
        wait = self._retry_interval
        if self._next_attempt is not None:
            wait = self._next_attempt - self._clock()
        return UpstreamUnavailable(
            "identity provider metadata unavailable",
            log_detail=f"SAML metadata {self._source.location}: {self._last_error}",
            retry_after=max(1, math.ceil(wait)),
        )

    def _refresh_locked(self) -> bool:
        try:
            value = self._parse(self._source.read())
        except (MetadataUnavailable, ValueError) as e:
            self._last_error = str(e)
            self._next_attempt = self._clock() + self._retry_interval
            logger.warning(
                "SAML metadata %s: refresh failed (%s); %s",
                self._source.location,
                e,
                "keeping the last good copy" if self._value is not None else "no copy held",
            )
            return False
        self._value = value
        self._last_error = None
        self._next_attempt = self._clock() + self._refresh_interval
        return True
