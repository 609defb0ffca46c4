"""SAML 2.0 Single Logout, service-provider side, at ``/v1/saml/{provider}/slo``.

``read_logout_request`` checks an IdP-initiated ``LogoutRequest`` (HTTP-Redirect or
HTTP-POST binding) before anyone acts on it: a signature by one of the IdP's published
certificates (the query signature, or an enveloped XML signature held to the same rules as
a Response's), SHA-2 only, schema-valid, Issuer the IdP, Destination this SLO URL, issued
at most ``MAX_LOGOUT_AGE`` seconds ago and not past NotOnOrAfter, and its ID accepted once
(the replay cache in the ``Store``). ``logout_response_url`` answers it with a
``LogoutResponse`` on the IdP's HTTP-Redirect SingleLogoutService, signed when the SP has
a key; ``logout_request_url`` starts an SP-initiated logout the same way.

``SloMetadata`` lists the SLO endpoint in the SP metadata under both bindings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as Saml2
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.metadata import OneLogin_Saml2_Metadata
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from identity.errors import InvalidRequest, InvalidToken
from identity.providers.saml_checks import (
    NS,
    check_not_sha1,
    check_size,
    check_structure,
    excerpt,
    parse,
    saml_time,
)
from identity.store import Store

LogoutBinding = Literal["redirect", "post"]

MAX_LOGOUT_AGE: Final = 300
"""Seconds after its IssueInstant for which a LogoutRequest is accepted (plus leeway)."""

_LOGOUT_REQUEST: Final = f"{{{Saml2.NS_SAMLP}}}LogoutRequest"


@dataclass(frozen=True)
class LogoutRequestSeen:
    """A verified IdP-initiated LogoutRequest: its ID, the NameID it names and the
    SessionIndexes it lists (none: every session of that NameID)."""

    id: str
    name_id: str
    session_indexes: tuple[str, ...]


def read_logout_request(
    *,
    provider: str,
    binding: LogoutBinding,
    params: Mapping[str, str],
    request_data: dict[str, Any],
    settings: OneLogin_Saml2_Settings,
    idp_entity_id: str,
    idp_certificates: tuple[str, ...],
    slo_url: str,
    leeway: int,
    store: Store,
) -> LogoutRequestSeen:
    """The verified LogoutRequest in ``params`` (the query or the form of the SLO request);
    ``InvalidToken`` saying why it is not accepted."""
    encoded = params.get("SAMLRequest")
    if not encoded:
        raise InvalidRequest("the request carries no SAMLRequest")
    check_size(encoded, "SAMLRequest")
    raw = _decode(encoded, deflated=binding == "redirect")
    root = parse(raw)
    check_structure(root, _LOGOUT_REQUEST)
    if binding == "redirect":
        _check_query_signature(params, request_data, settings)
    else:
        _check_xml_signature(raw, root, idp_certificates)
    if isinstance(OneLogin_Saml2_XML.validate_xml(root, "saml-schema-protocol-2.0.xsd"), str):
        raise InvalidToken("malformed LogoutRequest", log_detail="not schema-valid")

    issuers = root.xpath("saml:Issuer/text()", namespaces=NS)
    if issuers != [idp_entity_id]:
        raise InvalidToken("issuer not accepted", log_detail=f"Issuer {excerpt(issuers)}")
    if root.get("Destination") != slo_url:
        destination = excerpt(root.get("Destination"))
        raise InvalidToken("wrong destination", log_detail=f"Destination {destination}")
    now = OneLogin_Saml2_Utils.now()
    issued = saml_time(root.get("IssueInstant"))
    if not now - MAX_LOGOUT_AGE - leeway <= issued <= now + leeway:
        raise InvalidToken("logout request expired", log_detail=f"issued at {issued}, now {now}")
    not_on_or_after = root.get("NotOnOrAfter")
    if not_on_or_after is not None and saml_time(not_on_or_after) + leeway <= now:
        raise InvalidToken("logout request expired", log_detail="past NotOnOrAfter")

    request_id = root.get("ID") or ""
    names = root.xpath("saml:NameID/text()", namespaces=NS)
    if len(names) != 1 or not names[0].strip():
        raise InvalidToken("logout request names no subject", log_detail="no single NameID")
    digest = hashlib.sha256(f"{provider}\0{request_id}".encode()).hexdigest()
    if not store.set_if_absent(f"saml-logout:{digest}", b"1", MAX_LOGOUT_AGE + 2 * leeway):
        raise InvalidToken("logout request already used", log_detail=f"replayed {digest[:16]}")
    indexes = root.xpath("samlp:SessionIndex/text()", namespaces=NS)
    return LogoutRequestSeen(
        id=request_id, name_id=str(names[0]), session_indexes=tuple(map(str, indexes))
    )


def logout_response_url(
    settings: OneLogin_Saml2_Settings,
    request_data: dict[str, Any],
    *,
    in_response_to: str,
    relay_state: str | None,
    signed: bool,
) -> str:
    """The IdP's SLO response URL carrying a success ``LogoutResponse`` to
    ``in_response_to`` (HTTP-Redirect binding; query-signed with RSA-SHA256 when
    ``signed``)."""
    builder = OneLogin_Saml2_Logout_Response(settings)
    builder.build(in_response_to)
    parameters = {"SAMLResponse": builder.get_response()}
    if relay_state:
        parameters["RelayState"] = relay_state
    auth = OneLogin_Saml2_Auth(request_data, settings)
    if signed:
        auth.add_response_signature(parameters, Saml2.RSA_SHA256)
    return str(auth.redirect_to(settings.get_idp_slo_response_url(), parameters))


def logout_request_url(
    settings: OneLogin_Saml2_Settings,
    request_data: dict[str, Any],
    *,
    name_id: str,
    name_id_format: str | None,
    session_index: str | None,
) -> str:
    """The IdP's SLO URL carrying a signed ``LogoutRequest`` for ``name_id`` (and its
    ``session_index``), HTTP-Redirect binding; ``settings`` sign logout requests."""
    auth = OneLogin_Saml2_Auth(request_data, settings)
    return str(
        auth.logout(name_id=name_id, session_index=session_index, name_id_format=name_id_format)
    )


class SloMetadata(OneLogin_Saml2_Metadata):  # type: ignore[misc]  # python3-saml is untyped
    """python3-saml's SP metadata, its SingleLogoutService listed for HTTP-POST as well."""

    @classmethod
    def builder(cls, sp: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        built = str(super().builder(sp, *args, **kwargs))
        service = sp.get("singleLogoutService") or {}
        if "url" not in service:
            return built
        redirect = f'Binding="{Saml2.BINDING_HTTP_REDIRECT}"'
        post = f'Binding="{Saml2.BINDING_HTTP_POST}"'
        at = built.index("<md:SingleLogoutService " + redirect)
        end = built.index("/>", at) + 2
        element = built[at:end]
        return built[:end] + "\n        " + element.replace(redirect, post) + built[end:]


class SloSettings(OneLogin_Saml2_Settings):  # type: ignore[misc]  # python3-saml is untyped
    """python3-saml's settings, building SP metadata with ``SloMetadata``."""

    metadata_class = SloMetadata


def _decode(value: str, *, deflated: bool) -> bytes:
    """The message XML: base64, then raw DEFLATE for the HTTP-Redirect binding."""
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
        return zlib.decompress(raw, -15) if deflated else raw
    except (binascii.Error, ValueError, zlib.error):
        raise InvalidToken(
            "malformed LogoutRequest", log_detail="SAMLRequest is not base64 (DEFLATE)"
        ) from None


def _check_query_signature(
    params: Mapping[str, str], request_data: dict[str, Any], settings: OneLogin_Saml2_Settings
) -> None:
    if "Signature" not in params or "SigAlg" not in params:
        raise InvalidToken("the logout request is not signed", log_detail="no query signature")
    check_not_sha1([params["SigAlg"]])
    auth = OneLogin_Saml2_Auth(request_data, settings)
    if not auth.validate_request_signature(dict(params)):
        raise InvalidToken(
            "signature not accepted", log_detail=f"query signature: {auth.get_last_error_reason()}"
        )


def _check_xml_signature(raw: bytes, root: Any, certificates: tuple[str, ...]) -> None:
    signatures = root.xpath("ds:Signature", namespaces=NS)
    if len(signatures) != 1 or len(root.xpath("//ds:Signature", namespaces=NS)) != 1:
        raise InvalidToken("the logout request is not signed", log_detail="no single Signature")
    if not OneLogin_Saml2_Utils.validate_sign(
        raw,
        multicerts=[OneLogin_Saml2_Utils.format_cert(cert) for cert in certificates],
        xpath="/samlp:LogoutRequest/ds:Signature",
    ):
        raise InvalidToken("signature not accepted", log_detail="LogoutRequest signature")
