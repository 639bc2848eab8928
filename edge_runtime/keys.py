"""Reading the signing keys ``tinyfed provision`` writes, the same way on a device, a bridge and the gateway.

Formats, fixed here so every side agrees:

- a private signing key is Ed25519 in PEM, PKCS#8, unencrypted (``-----BEGIN PRIVATE KEY-----``), mode 0600:
  ``openssl pkey -in signing.key -noout`` reads it too;
- a public key is Ed25519 in PEM, SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``);
- a key's id (the COSE ``kid``) is the first 8 bytes of the SHA-256 of its 32 raw public bytes, so a
  verifier finds the key a message names without trusting anything else in the message.

A private key readable by group or others is refused, as OpenSSH refuses one: a key that has been
exposed is not a key to sign with. ``cryptography`` is imported only when a key is read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TinyfedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from .wire.envelope import Ed25519Signer

KEY_ID_BYTES = 8


class KeyFileError(ValueError, TinyfedError):
    """A key file is missing, unreadable, of the wrong kind, or readable by others; the message names the file."""


def key_id(public_raw: bytes) -> bytes:
    """The id a signature names its key by: SHA-256 of the 32 raw Ed25519 public bytes, first 8 bytes."""
    if len(public_raw) != 32:
        raise KeyFileError(f"an Ed25519 public key is 32 bytes, not {len(public_raw)}")
    return hashlib.sha256(public_raw).digest()[:KEY_ID_BYTES]


def public_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: no such {what} file") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """This side's Ed25519 private key; refused when group or others may read it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path)
    data = _read(path, "signing key")
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{path}: signing key is readable by others (mode {mode:04o}); chmod 600 {path}")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removesuffix('PrivateKey')} key, not Ed25519")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A pinned Ed25519 public key (the gateway's, on a device)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path)
    try:
        key = load_pem_public_key(_read(path, "public key"))
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removesuffix('PublicKey')} key, not Ed25519")
    return key


def load_signer(path: str | Path) -> Ed25519Signer:
    """A COSE_Sign1 signer (``wire.sign``) for the key at ``path``, its ``key_id`` set from the public key."""
    from .wire.envelope import Ed25519Signer

    key = load_signing_key(path)
    return Ed25519Signer(key, key_id(public_raw(key.public_key())))
