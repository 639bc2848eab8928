"""Key agreement and authenticated encryption for SecAgg+, from ``cryptography`` (nothing hand-written).

Each device makes two X25519 key pairs per session: ``c`` to encrypt the
shares it sends its neighbours through the gateway, ``s`` to agree the
pairwise mask seeds. A shared secret goes through HKDF-SHA256 with the
session id and a label, so the two uses (and two sessions) never share a key;
shares travel under AES-256-GCM with the sender, the recipient and the
session as associated data, so the gateway can neither read nor re-address
them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import TinyfedError

KEY_BYTES = 32
NONCE_BYTES = 12
LABEL_SHARES = b"tinyfed secagg shares"
LABEL_MASK = b"tinyfed secagg mask"


class DecryptionFailed(TinyfedError, ValueError):
    """A ciphertext that is not what its sender encrypted for this recipient in this session."""


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # raw X25519 private key (32 bytes)
    public: bytes  # raw X25519 public key (32 bytes)

    @classmethod
    def generate(cls, private: bytes | None = None) -> KeyPair:
        """A fresh pair; ``private``: 32 random bytes to use (X25519 clamps any 32 bytes into a valid scalar)."""
        return cls.from_private(private or X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(private, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def agree(private: bytes, peer_public: bytes, session: bytes, label: bytes) -> bytes:
    """A 32-byte key both ends derive alike: HKDF-SHA256 of the X25519 secret, bound to the session and use."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=session, info=label).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("share ciphertext does not verify") from exc
