"""What the SAML service provider says about itself: the NameID format it asks for (in its
metadata and in each AuthnRequest's NameIDPolicy), how long its metadata may be cached,
and the check of its own signing key pair."""

from __future__ import annotations

from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from identity.providers.base import ProviderProblem

NameIdFormat = Literal["persistent", "email", "unspecified", "transient"]
"""The ``name_id_format`` of a ``kind: saml`` entry: a short name for a SAML 2.0 URN."""

NAME_ID_FORMATS: Final[dict[str, str]] = {
    "persistent": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "email": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "unspecified": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
    "transient": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
}
DEFAULT_NAME_ID_FORMAT: Final[NameIdFormat] = "persistent"

# The SP metadata is valid for two days from each build (python3-saml's default
# validUntil) and rebuilt every hour; a consumer may cache it for one day, inside that.
SP_METADATA_CACHE_SECONDS: Final = 86400


def check_sp_key_pair(key_pem: str, cert_pem: str) -> None:
    """``ProviderProblem`` unless ``key_pem`` is an unencrypted RSA key of at least 2048
    bits and ``cert_pem`` a certificate of its public key."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ProviderProblem(("sp_key",), "not an unencrypted PEM private key") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("utf-8"))
    except ValueError:
        raise ProviderProblem(("sp_cert",), "not a PEM X.509 certificate") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ProviderProblem(("sp_key",), "must be an RSA key of at least 2048 bits")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ProviderProblem(("sp_cert",), "does not belong to sp_key")
