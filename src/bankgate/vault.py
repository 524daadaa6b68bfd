"""The master key and what is derived from it: the pepper for secret hashes and the key that encrypts signing keys.

Machine secrets carry 256 random bits, so a keyed fast hash (HMAC-SHA-256 with a server pepper) protects them as
well as a slow password hash would, without making every token request pay for bcrypt or argon2.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bankgate.files import private_dir, tighten, write_private

__all__ = ["MasterKeyError", "Vault", "load_master_key"]

MASTER_KEY_FILE = "master.key"


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed, or not the one this database was initialised with."""


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"bankgate/" + purpose).derive(master)


def _decode_master(text: str, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise MasterKeyError(f"{source} must hold 32 bytes in base64 (make one with: openssl rand -base64 32)")
    return raw


def load_master_key(configured: str | None, data_dir: Path, *, create: bool) -> bytes:
    """Read the master key from settings, else from `<data_dir>/master.key` (created 0600 when `create`, in a
    data directory created 0700; an existing file readable by others is made 0600)."""
    if configured:
        return _decode_master(configured, "BANKGATE_MASTER_KEY")
    path = data_dir / MASTER_KEY_FILE
    if path.is_file():
        tighten(path)
        return _decode_master(path.read_text(), str(path))
    if not create:
        raise MasterKeyError(f"no master key: {path} does not exist and BANKGATE_MASTER_KEY is not set; "
                             "run `bankgate init` first")
    private_dir(data_dir)
    raw = secrets.token_bytes(32)
    write_private(path, (base64.b64encode(raw).decode() + "\n").encode(), replace=False)
    return raw


class Vault:
    """Keyed hashing and authenticated encryption under keys derived from the master key."""

    __slots__ = ("_kek", "_pepper")

    def __init__(self, master_key: bytes) -> None:
        self._pepper = _derive(master_key, b"secret-hash/v1")
        self._kek = AESGCM(_derive(master_key, b"key-encryption/v1"))

    def __repr__(self) -> str:
        return "Vault(<keys hidden>)"

    def hash_secret(self, secret: str) -> str:
        return hmac.digest(self._pepper, secret.encode(), "sha256").hex()  # one-shot C HMAC: no Python object

    def matches(self, secret: str, stored_hashes: Iterable[str]) -> bool:
        """Constant-time check of `secret` against every stored hash (no early exit on a match)."""
        candidate = self.hash_secret(secret).encode()
        found = False
        for stored in stored_hashes:
            found |= hmac.compare_digest(candidate, stored.encode())
        return found

    def check_value(self) -> str:
        """A fingerprint of the master key, stored with the schema so a wrong key fails loudly, not silently."""
        return self.hash_secret("bankgate master key check")

    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._kek.encrypt(nonce, plaintext, context)

    def decrypt(self, blob: bytes, *, context: bytes) -> bytes:
        return self._kek.decrypt(blob[:12], blob[12:], context)
