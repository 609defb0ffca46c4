"""Encryption at rest for what the store keeps that would be dangerous to read: cached
credentials, upstream tokens, refresh tokens. AES-256-GCM with a key derived from
``service.secret_key`` by HKDF; the store key is bound in as associated data, so a sealed
value copied under another key does not open."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12


class Sealer:
    """Seals and opens store values; also derives keyed hashes for store keys."""

    def __init__(self, secret_key: str) -> None:
        material = secret_key.encode()
        self._aead = AESGCM(_derive(material, b"chime-broker/seal/v1"))
        self._mac_key = _derive(material, b"chime-broker/store-key/v1")

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, *, context: str) -> bytes | None:
        """The plaintext, or None when the value was not sealed by this key for ``context``."""
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            return None
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag:
            return None

    def key_hash(self, *parts: str) -> str:
        """A keyed hash of ``parts`` for use in store keys: stable, not reversible."""
        message = "\x1f".join(parts).encode()
        return hmac.new(self._mac_key, message, hashlib.sha256).hexdigest()


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def token_hash(token: str) -> str:
    """How a bearer session token is stored: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
