"""COSE_Sign1 (RFC 9052) around any tinyfed message: a device signs its update, a gateway its manifest.

The signed form is tag 18 over [protected, unprotected, payload, signature]
with protected = {1: alg} and unprotected = {4: key id}; the payload is the
message's own CBOR bytes, so a verifier checks exactly the bytes it then
decodes. Ed25519 (alg -8, EdDSA) through ``cryptography`` is provided; any
signer/verifier with the same two methods plugs in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2

from .cbor import dumps, loads
from .errors import SchemaError, ValueRejected
from .limits import Limits
from .scan import COSE_SIGN1_TAG

ALG_EDDSA = -8
HEADER_ALG = 1
HEADER_KID = 4


class Signer(Protocol):
    alg: int
    key_id: bytes

    def sign(self, to_be_signed: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, key_id: bytes, alg: int, to_be_signed: bytes, signature: bytes) -> None:
        """Return quietly when valid; raise ValueRejected otherwise."""


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    return dumps(["Signature1", protected, b"", payload])


def sign(message: bytes, signer: Signer) -> bytes:
    protected = dumps({HEADER_ALG: signer.alg})
    signature = signer.sign(_to_be_signed(protected, message))
    return dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {HEADER_KID: signer.key_id}, message, signature]))


@dataclass
class Opened:
    payload: bytes
    key_id: bytes | None = None  # None: the message was not signed
    verified: bool = False
    decoded: Any = None  # the plain message's CBOR value, when it was not wrapped (saves a second parse)


def open_envelope(
    data: bytes, limits: Limits, verifier: Verifier | None = None, require_signature: bool = False
) -> Opened:
    """Unwrap a COSE_Sign1 if present and verify it; plain messages pass through unless a signature is required."""
    obj = loads(data, limits, "envelope")
    if not isinstance(obj, cbor2.CBORTag):
        if require_signature:
            raise ValueRejected("envelope", "message is not signed and this receiver requires signatures")
        return Opened(bytes(data), decoded=obj)
    if obj.tag != COSE_SIGN1_TAG:
        raise SchemaError("envelope", f"tag {obj.tag} is not COSE_Sign1 (18)")
    parts = obj.value  # cbor2 6 builds tuples and frozendicts inside tags, cbor2 5 lists and dicts
    if not (
        isinstance(parts, list | tuple)
        and len(parts) == 4
        and isinstance(parts[0], bytes)
        and isinstance(parts[1], Mapping)
        and isinstance(parts[2], bytes)
        and isinstance(parts[3], bytes)
    ):
        raise SchemaError(
            "envelope", "COSE_Sign1 must be [protected bstr, unprotected map, payload bstr, signature bstr]"
        )
    protected_raw, unprotected, payload, signature = parts
    protected = loads(protected_raw, limits, "envelope.protected") if protected_raw else {}
    if not isinstance(protected, Mapping) or not isinstance(protected.get(HEADER_ALG), int):
        raise SchemaError("envelope.protected", "must be a map holding the algorithm (key 1)")
    key_id = unprotected.get(HEADER_KID)
    if not isinstance(key_id, bytes):
        raise SchemaError("envelope.unprotected", "must hold the key id (key 4) as bytes")
    if verifier is None:
        if require_signature:
            raise ValueRejected("envelope", "signatures are required but no verifier is configured")
        return Opened(payload, key_id, False)
    verifier.verify(key_id, protected[HEADER_ALG], _to_be_signed(protected_raw, payload), signature)
    return Opened(payload, key_id, True)


@dataclass
class Ed25519Signer:
    private_key: Any  # cryptography Ed25519PrivateKey
    key_id: bytes
    alg: int = ALG_EDDSA

    @classmethod
    def generate(cls, key_id: bytes) -> Ed25519Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate(), key_id)

    def sign(self, to_be_signed: bytes) -> bytes:
        return bytes(self.private_key.sign(to_be_signed))

    def public_key(self) -> Any:
        return self.private_key.public_key()


@dataclass
class Ed25519Verifier:
    keys: dict[bytes, Any] = field(default_factory=dict)  # key id -> Ed25519PublicKey

    def verify(self, key_id: bytes, alg: int, to_be_signed: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        if alg != ALG_EDDSA:
            raise ValueRejected("envelope.protected.alg", f"algorithm {alg} not accepted (EdDSA, -8, is)")
        key = self.keys.get(key_id)
        if key is None:
            raise ValueRejected("envelope.unprotected.kid", f"unknown key id {key_id.hex()}")
        try:
            key.verify(signature, to_be_signed)
        except InvalidSignature as exc:
            raise ValueRejected("envelope.signature", "signature does not verify") from exc
