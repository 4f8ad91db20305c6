"""Provider credentials encrypted at rest: AES-256-GCM, key ids, row-bound ciphertexts.

A ciphertext is `key_id \\x00 nonce(12) ciphertext+tag`; the row id is the associated
data, so a ciphertext copied onto another row does not decrypt. Keys come from
INFERENCE_ENCRYPTION_KEYS (`id:base64key,...`): the first encrypts, all decrypt, which
lets operators add a key, re-encrypt (`python -m inference rotate-keys`), then retire the
old one, without downtime.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class KeyringError(ValueError):
    pass


class Keyring:
    def __init__(self, spec: str) -> None:
        self._keys: dict[str, AESGCM] = {}
        self.primary = ""
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            key_id, sep, encoded = item.partition(":")
            if not sep or not key_id or "\x00" in key_id or len(key_id) > 32:
                raise KeyringError("INFERENCE_ENCRYPTION_KEYS items are `key_id:base64(32 bytes)`")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"key {key_id!r} is not valid base64") from None
            if len(raw) != 32:
                raise KeyringError(f"key {key_id!r} must be 32 bytes (AES-256), not {len(raw)}")
            if key_id in self._keys:
                raise KeyringError(f"key id {key_id!r} appears twice")
            self._keys[key_id] = AESGCM(raw)
            self.primary = self.primary or key_id
        if not self._keys:
            raise KeyringError("INFERENCE_ENCRYPTION_KEYS holds no key")

    @staticmethod
    def generate_key() -> str:
        return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()

    def encrypt(self, plaintext: str, *, row_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.primary].encrypt(nonce, plaintext.encode(), row_id.encode())
        return self.primary.encode() + b"\x00" + nonce + sealed

    def key_id_of(self, blob: bytes) -> str:
        key_id, sep, _ = blob.partition(b"\x00")
        if not sep:
            raise KeyringError("not a ciphertext of ours")
        return key_id.decode()

    def decrypt(self, blob: bytes, *, row_id: str) -> str:
        key_id = self.key_id_of(blob)
        aead = self._keys.get(key_id)
        if aead is None:
            raise KeyringError(f"no key {key_id!r} in INFERENCE_ENCRYPTION_KEYS")
        body = blob[len(key_id) + 1 :]
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], row_id.encode()).decode()
        except InvalidTag:
            raise KeyringError("ciphertext does not belong to this row, or was altered") from None
