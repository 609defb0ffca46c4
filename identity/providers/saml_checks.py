"""What a SAML message must be before and after python3-saml verifies it, and how a
refusal is said.

Before any signature is checked: the expected root element, no encrypted elements, and
every ``ds:Signature`` with one same-document Reference to its parent's ID, SHA-2
digests and signature methods, and only c14n and enveloped-signature transforms (SHA-1
is refused in words an IdP admin can act on). After: the signature the provider's
``signature`` setting asks for is there and covers the one assertion. python3-saml's
refusals become one short reason each; its own text goes to ``log_detail`` only.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Mapping
from typing import Final, Literal

from lxml import etree
from onelogin.saml2.constants import OneLogin_Saml2_Constants as Saml2
from onelogin.saml2.errors import OneLogin_Saml2_ValidationError
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from identity.errors import AccessDenied, BrokerError, InvalidToken, PayloadTooLarge

SignaturePlacement = Literal["either", "assertion", "response"]
"""The ``signature`` of a ``kind: saml`` entry: which signature must cover the assertion."""

MAX_SAML_MESSAGE_BYTES: Final = 1024 * 1024
SHA1_REFUSAL: Final = "SHA-1 is not accepted; configure the IdP to sign with RSA-SHA256"

NS: Final = {"samlp": Saml2.NS_SAMLP, "saml": Saml2.NS_SAML, "ds": Saml2.NS_DS}
_SIGNATURE_METHODS: Final = frozenset(
    {
        Saml2.RSA_SHA256,
        Saml2.RSA_SHA384,
        Saml2.RSA_SHA512,
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    }
)
_DIGEST_METHODS: Final = frozenset({Saml2.SHA256, Saml2.SHA384, Saml2.SHA512})
SHA1_METHODS: Final = frozenset(
    {
        Saml2.RSA_SHA1,
        Saml2.DSA_SHA1,
        Saml2.SHA1,
        "http://www.w3.org/2000/09/xmldsig#hmac-sha1",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha1",
    }
)
_CANONICALIZATIONS: Final = frozenset(
    {
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/2006/12/xml-c14n11",
    }
)
_TRANSFORMS: Final = _CANONICALIZATIONS | {"http://www.w3.org/2000/09/xmldsig#enveloped-signature"}
_ENCRYPTED: Final = "//saml:EncryptedAssertion | //saml:EncryptedID | //saml:EncryptedAttribute"

_STATUS: Final = "urn:oasis:names:tc:SAML:2.0:status:"
# Second-level status codes by which an IdP says it refused this user.
_REFUSALS: Final = frozenset(
    _STATUS + code
    for code in ("AuthnFailed", "RequestDenied", "UnknownPrincipal", "NoAuthnContext")
)

_V = OneLogin_Saml2_ValidationError
_REASONS: Final[Mapping[int, str]] = {
    **dict.fromkeys(
        (
            _V.WRONG_SIGNED_ELEMENT,
            _V.ID_NOT_FOUND_IN_SIGNED_ELEMENT,
            _V.DUPLICATED_ID_IN_SIGNED_ELEMENTS,
            _V.INVALID_SIGNED_ELEMENT,
            _V.DUPLICATED_REFERENCE_IN_SIGNED_ELEMENTS,
            _V.UNEXPECTED_SIGNED_ELEMENTS,
            _V.WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE,
            _V.WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION,
            _V.WRONG_NUMBER_OF_SIGNATURES,
            _V.INVALID_SIGNATURE,
        ),
        "signature not accepted",
    ),
    _V.NO_SIGNED_MESSAGE: "the response is not signed",
    _V.NO_SIGNED_ASSERTION: "the assertion is not signed",
    _V.NO_SIGNATURE_FOUND: "the response carries no signature",
    _V.DEPRECATED_SIGNATURE_METHOD: SHA1_REFUSAL,
    _V.DEPRECATED_DIGEST_METHOD: SHA1_REFUSAL,
    _V.WRONG_NUMBER_OF_ASSERTIONS: "expected exactly one assertion",
    _V.WRONG_INRESPONSETO: "response to another request",
    _V.ASSERTION_TOO_EARLY: "assertion not yet valid",
    _V.ASSERTION_EXPIRED: "assertion expired",
    _V.RESPONSE_EXPIRED: "assertion expired",
    _V.SESSION_EXPIRED: "assertion expired",
    _V.WRONG_DESTINATION: "wrong destination",
    _V.EMPTY_DESTINATION: "wrong destination",
    _V.WRONG_AUDIENCE: "audience not accepted",
    _V.ISSUER_MULTIPLE_IN_RESPONSE: "issuer not accepted",
    _V.ISSUER_NOT_FOUND_IN_ASSERTION: "issuer not accepted",
    _V.WRONG_ISSUER: "issuer not accepted",
    _V.WRONG_SUBJECTCONFIRMATION: "subject confirmation failed",
    _V.NO_NAMEID: "assertion names no subject",
    _V.EMPTY_NAMEID: "assertion names no subject",
    _V.SP_NAME_QUALIFIER_NAME_MISMATCH: "name qualifier not accepted",
    _V.STATUS_CODE_IS_NOT_SUCCESS: "identity provider returned an error",
}


def check_size(value: object, what: str = "SAMLResponse") -> None:
    """Refuse a form value that is not text or is over 1 MiB."""
    if not isinstance(value, str):
        raise InvalidToken("malformed SAML response", log_detail=f"{what} is not text")
    if len(value) > MAX_SAML_MESSAGE_BYTES:
        size = f"{what} of {len(value)} bytes"
        raise PayloadTooLarge("SAML response too large", log_detail=size)


def decode(value: str) -> tuple[str, etree._Element]:
    """The base64 text without line breaks, and the document parsed with python3-saml's
    parser (no DTD, no entities, no network, comments dropped)."""
    # Base64 from IdPs may be wrapped in lines; nothing else outside the alphabet passes.
    encoded = "".join(value.split())
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidToken(
            "malformed SAML response", log_detail="SAMLResponse is not base64"
        ) from None
    return encoded, parse(raw)


def parse(raw: bytes | str) -> etree._Element:
    """``raw`` parsed with python3-saml's hardened parser."""
    try:
        return OneLogin_Saml2_XML.to_etree(raw)
    except (etree.LxmlError, ValueError) as e:
        raise InvalidToken(
            "malformed SAML response", log_detail=f"not acceptable XML: {excerpt(e)}"
        ) from None


def check_structure(root: etree._Element, tag: str = f"{{{Saml2.NS_SAMLP}}}Response") -> None:
    """Refuse what the signature check should never see: another root than ``tag``,
    encrypted elements, and signatures that are not one SHA-2 reference to their parent."""
    if root.tag != tag:
        raise InvalidToken("malformed SAML response", log_detail=f"root element {root.tag}")
    if root.xpath(_ENCRYPTED, namespaces=NS):
        raise InvalidToken(
            "encrypted assertions are not supported", log_detail="encrypted element present"
        )
    for signature in root.xpath("//ds:Signature", namespaces=NS):
        problem = _signature_problem(signature)
        if problem is not None:
            raise InvalidToken("signature not accepted", log_detail=problem)


def _signature_problem(signature: etree._Element) -> str | None:
    signed_info = signature.xpath("ds:SignedInfo", namespaces=NS)
    if len(signed_info) != 1:
        return "a Signature without exactly one SignedInfo"
    info = signed_info[0]
    problem = _algorithm_problem(
        info, "CanonicalizationMethod", _CANONICALIZATIONS, "canonicalization"
    ) or _algorithm_problem(info, "SignatureMethod", _SIGNATURE_METHODS, "signature method")
    if problem is not None:
        return problem
    references = info.xpath("ds:Reference", namespaces=NS)
    if len(references) != 1:
        return f"{len(references)} References in one Signature"
    reference = references[0]
    parent = signature.getparent()
    parent_id = parent.get("ID") if parent is not None else None
    if not parent_id or reference.get("URI") != "#" + parent_id:
        return f"Reference URI {excerpt(reference.get('URI'))} is not its parent's ID"
    problem = _algorithm_problem(reference, "DigestMethod", _DIGEST_METHODS, "digest method")
    if problem is not None:
        return problem
    transforms = reference.xpath("ds:Transforms/ds:Transform/@Algorithm", namespaces=NS)
    if not set(transforms) <= _TRANSFORMS:
        return f"transforms {excerpt(transforms)}"
    return None


def _algorithm_problem(
    element: etree._Element, method: str, allowed: frozenset[str], what: str
) -> str | None:
    """``what`` and the Algorithms found unless ``element`` has exactly one ``method`` child
    whose Algorithm is ``allowed``; ``InvalidToken`` for a SHA-1 one."""
    algorithms = element.xpath(f"ds:{method}/@Algorithm", namespaces=NS)
    check_not_sha1(algorithms)
    if len(algorithms) != 1 or algorithms[0] not in allowed:
        return f"{what} {excerpt(algorithms)}"
    return None


def check_not_sha1(algorithms: list[str]) -> None:
    """``InvalidToken`` saying so in words when any of ``algorithms`` is SHA-1 based."""
    found = [algorithm for algorithm in algorithms if algorithm in SHA1_METHODS]
    if found:
        raise InvalidToken(SHA1_REFUSAL, log_detail=f"{SHA1_REFUSAL} (the IdP used {found[0]})")


def check_signature_placement(root: etree._Element, placement: SignaturePlacement) -> None:
    """After python3-saml verified every signature present: the Response holds one
    assertion, and the signature ``placement`` asks for covers it (the assertion's own,
    or the Response's, an enveloped signature of the root over the whole document)."""
    assertions = root.xpath("/samlp:Response/saml:Assertion", namespaces=NS)
    if len(assertions) != 1:
        raise InvalidToken("expected exactly one assertion", log_detail="after validation")
    response_signed = bool(root.xpath("/samlp:Response/ds:Signature", namespaces=NS))
    assertion_signed = bool(assertions[0].xpath("ds:Signature", namespaces=NS))
    if placement == "response" and not response_signed:
        raise InvalidToken(
            "the response is not signed", log_detail="signature: response, Response unsigned"
        )
    if placement == "assertion" and not assertion_signed:
        raise InvalidToken(
            "the assertion is not signed", log_detail="signature: assertion, Assertion unsigned"
        )
    if not (response_signed or assertion_signed):
        raise InvalidToken("the response carries no signature", log_detail="nothing signed")


def check_status(root: etree._Element) -> None:
    """Turn a non-success status into ``AccessDenied`` (the IdP refused the user:
    top-level Responder, or AuthnFailed, RequestDenied, UnknownPrincipal, NoAuthnContext)
    or ``InvalidToken`` (anything else, e.g. Requester or VersionMismatch)."""
    codes = root.xpath("samlp:Status/samlp:StatusCode/@Value", namespaces=NS)
    if len(codes) != 1:
        raise InvalidToken("malformed SAML response", log_detail="no single StatusCode")
    top = codes[0]
    if top == Saml2.STATUS_SUCCESS:
        return
    second = root.xpath("samlp:Status/samlp:StatusCode/samlp:StatusCode/@Value", namespaces=NS)
    messages = root.xpath("samlp:Status/samlp:StatusMessage", namespaces=NS)
    log_detail = f"status {excerpt(top)} / {excerpt(second)}"
    if messages:
        log_detail += f": {excerpt(OneLogin_Saml2_XML.element_text(messages[0]))}"
    if top == Saml2.STATUS_RESPONDER or any(code in _REFUSALS for code in second):
        raise AccessDenied("the identity provider refused the sign-in", log_detail=log_detail)
    raise InvalidToken("identity provider returned an error", log_detail=log_detail)


def refusal(error: OneLogin_Saml2_ValidationError) -> BrokerError:
    """python3-saml's refusal as the short reason a person is shown."""
    reason = _REASONS.get(error.code, "SAML response not accepted")
    return InvalidToken(reason, log_detail=f"{reason}; python3-saml: {excerpt(error)}")


def saml_time(value: str | None) -> int:
    """A SAML dateTime as Unix time; ``InvalidToken`` when it is not one."""
    try:
        return int(OneLogin_Saml2_Utils.parse_SAML_to_time(value))
    except Exception as e:  # python3-saml raises a bare Exception for a bad time
        raise InvalidToken("malformed SAML response", log_detail=f"time {excerpt(value)}") from e


def excerpt(value: object, limit: int = 300) -> str:
    """``value`` for a log line: control characters dropped, at most ``limit`` chars."""
    text = "".join(ch for ch in str(value) if unicodedata.category(ch) != "Cc")
    return text if len(text) <= limit else text[: limit - 3] + "..."
