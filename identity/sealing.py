"""Encryption at rest for what the store keeps that would be dangerous to read: cached
credentials, upstream tokens, refresh tokens. AES-256-GCM with a key derived from
``service.secret_key`` by HKDF; the store key is bound in as associated data, so a sealed
value copied under another key does not open.

With several secrets (rotation) the first seals and derives store keys; every one opens,
and ``key_hashes`` gives a store key under each secret, newest first, for lookups of values
written before the rotation."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12
# Store-key hashes remembered per Sealer (a worker's users, markers and cache entries); the
# memory is emptied when full, so it stays bounded whatever the traffic.
_REMEMBERED_HASHES = 8192


class Sealer:
    """Seals and opens store values; also derives keyed hashes for store keys.

    ``secret_key`` is one secret or several, newest first.
    """

    def __init__(self, secret_key: str | Sequence[str]) -> None:
        keys = [secret_key] if isinstance(secret_key, str) else list(secret_key)
        if not keys:
            raise ValueError("a Sealer needs at least one secret")
        materials = [key.encode() for key in keys]
        self._aeads = [AESGCM(_derive(m, b"chime-broker/seal/v1")) for m in materials]
        self._mac_keys = [_derive(m, b"chime-broker/store-key/v1") for m in materials]
        self._hashes: dict[tuple[str, ...], tuple[str, ...]] = {}

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aeads[0].encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, *, context: str) -> bytes | None:
        """The plaintext, or None when the value was not sealed by any of the secrets for
        ``context``."""
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            return None
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, context.encode())
            except InvalidTag:
                continue
        return None

    def key_hash(self, *parts: str) -> str:
        """A keyed hash of ``parts`` for use in store keys: stable, not reversible. Under the
        first (newest) secret."""
        return self.key_hashes(*parts)[0]

    def key_hashes(self, *parts: str) -> list[str]:
        """``key_hash`` of ``parts`` under each secret, newest first."""
        found = self._hashes.get(parts)
        if found is None:
            message = "\x1f".join(parts).encode()
            found = tuple(hmac.new(k, message, hashlib.sha256).hexdigest() for k in self._mac_keys)
            if len(self._hashes) >= _REMEMBERED_HASHES:
                self._hashes.clear()
            self._hashes[parts] = found
        return list(found)


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def token_hash(token: str) -> str:
    """How a bearer session token is stored: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
