"""COSE_Sign1 (RFC 9052) around any tinyfed message: a device signs its update, a gateway its manifest.

The signed form is tag 18 over [protected, unprotected, payload, signature]
with protected = {1: alg} and unprotected = {4: key id}; the payload is the
message's own CBOR bytes, so a verifier checks exactly the bytes it then
decodes. Ed25519 (alg -8, EdDSA) through ``cryptography`` is provided; any
signer/verifier with the same two methods plugs in.

Opening is written for hostile bytes (docs/protocol.md, "Signatures"): the
algorithm counts only when protected, a ``crit`` label this code does not
process refuses the message (RFC 9052 section 3.1), no label may appear twice
or in both buckets, header maps hold no tags and few entries, the key id and
the signature are bounded, and the payload is one plain message, never a
second envelope. Every refusal is a WireError naming the field
(``envelope.protected.crit``); none echoes more than a bounded key id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2

from .cbor import dumps, loads
from .errors import LimitExceeded, SchemaError, ValueRejected
from .limits import Limits
from .scan import COSE_SIGN1_TAG, _head

COMPACT_TYPE_BYTE = b"\x0a"  # compact.TYPE_BYTE; compact imports update, so this module cannot import it
ALG_EDDSA = -8  # RFC 9053 "EdDSA"; with Ed25519 keys only, so it names one algorithm here
ALG_ED25519 = -19  # RFC 9864's fully specified Ed25519: accepted, not yet written (pycose 1.1 lacks it)
HEADER_ALG = 1
HEADER_CRIT = 2
HEADER_CONTENT_TYPE = 3
HEADER_KID = 4
LABEL_NAMES = {HEADER_ALG: "alg", HEADER_CRIT: "crit", HEADER_CONTENT_TYPE: "content_type", HEADER_KID: "kid"}
# Labels whose meaning this code applies, so a sender may mark them critical.
UNDERSTOOD = frozenset({HEADER_ALG, HEADER_KID})
MAX_KEY_ID_BYTES = 64  # a full SHA-512 thumbprint fits; tinyfed's own are 8 bytes (key_id_for)
MAX_SIGNATURE_BYTES = 512  # any Verifier's bound; Ed25519Verifier wants exactly 64
MAX_HEADERS = 16  # labels per bucket: tinyfed writes one each
ED25519_SIGNATURE_BYTES = 64
OKP, CRV_ED25519 = 1, 6  # COSE key type and curve (RFC 9053), for the key thumbprint


class Signer(Protocol):
    alg: int
    key_id: bytes

    def sign(self, to_be_signed: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, key_id: bytes, alg: int, to_be_signed: bytes, signature: bytes) -> None:
        """Return quietly when valid; raise ValueRejected otherwise."""


def _to_be_signed(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 section 4.4 Sig_structure, with an empty external_aad: the bytes Ed25519 signs."""
    return dumps(["Signature1", protected, b"", payload])


def sign(message: bytes, signer: Signer) -> bytes:
    """The COSE_Sign1 of ``message`` (a tinyfed message's bytes): deterministic for Ed25519."""
    if not 1 <= len(signer.key_id) <= MAX_KEY_ID_BYTES:
        raise ValueError(f"key id of {len(signer.key_id)} bytes; receivers take 1..{MAX_KEY_ID_BYTES}")
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
    """Unwrap a COSE_Sign1 if present and verify it; plain messages pass through unless a signature is required.

    The key id comes back unchecked against the payload: the caller binds it
    (the key registered for the device the message names).
    """
    # A compact update (wire/compact.py) is not CBOR: a plain, unsigned message.
    if isinstance(data, bytes | bytearray | memoryview) and bytes(data[:1]) == COMPACT_TYPE_BYTE:
        if require_signature:
            raise ValueRejected("envelope", "message is not signed and this receiver requires signatures")
        return Opened(bytes(data))
    obj = loads(data, limits, "envelope")
    if not isinstance(obj, cbor2.CBORTag):
        if require_signature:
            raise ValueRejected("envelope", "message is not signed and this receiver requires signatures")
        return Opened(bytes(data), decoded=obj)
    if obj.tag != COSE_SIGN1_TAG:
        raise SchemaError("envelope", f"tag {obj.tag} is not COSE_Sign1 (18)")
    protected_raw, unprotected, payload, signature = _parts(obj.value)
    protected = _protected(protected_raw, limits)
    _check_unprotected(unprotected, bytes(data))
    both = protected.keys() & unprotected.keys()
    if both:
        label = next(iter(both))
        raise SchemaError(f"envelope.unprotected.{_name(label)}", "label also in the protected header (RFC 9052 3)")
    alg = _algorithm(protected, unprotected)
    _check_crit(protected, unprotected)
    key_id = _key_id(protected, unprotected)
    if verifier is None:
        if require_signature:
            raise ValueRejected("envelope", "signatures are required but no verifier is configured")
        return Opened(payload, key_id, False)
    verifier.verify(key_id, alg, _to_be_signed(protected_raw, payload), signature)
    return Opened(payload, key_id, True)


def _parts(value: Any) -> tuple[bytes, Mapping[Any, Any], bytes, bytes]:
    """The four members of a COSE_Sign1, each checked for type and size."""
    if isinstance(value, cbor2.CBORTag):
        raise SchemaError("envelope", f"tag {value.tag} inside COSE_Sign1: nested tags are not accepted")
    # cbor2 6 builds tuples and frozendicts inside tags, cbor2 5 lists and dicts
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise SchemaError(
            "envelope", "COSE_Sign1 must be [protected bstr, unprotected map, payload bstr, signature bstr]"
        )
    protected_raw, unprotected, payload, signature = value
    if not isinstance(protected_raw, bytes):
        raise SchemaError("envelope.protected", "must be a byte string (the encoded header map)")
    if not isinstance(unprotected, Mapping):
        raise SchemaError("envelope.unprotected", "must be a map")
    if payload is None:
        raise SchemaError("envelope.payload", "detached payloads are not accepted: the message travels inside")
    if not isinstance(payload, bytes) or not payload:
        raise SchemaError("envelope.payload", "must be the message's bytes (a non-empty byte string)")
    if payload[0] >> 5 == 6:  # the head of a tag: a signed message inside a signed message, or a bare typed array
        raise SchemaError("envelope.payload", "a tagged item is not a tinyfed message (nested envelopes are refused)")
    if not isinstance(signature, bytes) or not signature:
        raise SchemaError("envelope.signature", "must be a non-empty byte string")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise LimitExceeded("envelope.signature", f"{len(signature)} bytes exceed {MAX_SIGNATURE_BYTES}")
    return protected_raw, unprotected, payload, signature


def _protected(raw: bytes, limits: Limits) -> Mapping[Any, Any]:
    """The protected header map: a whole CBOR map, labels once each, no tags."""
    if not raw:  # RFC 9052: no protected headers is the empty string; ours always carry the algorithm
        return {}
    header = loads(raw, limits, "envelope.protected")
    if not isinstance(header, Mapping):
        raise SchemaError("envelope.protected", f"must encode a map, not {type(header).__name__}")
    _, declared, _ = _head(raw, 0, "envelope.protected")
    _check_header(header, declared, "envelope.protected")
    return header


def _check_unprotected(header: Mapping[Any, Any], data: bytes) -> None:
    """Labels once each (counted in the bytes, since cbor2 keeps the last of a repeated key), no tags."""
    field_ = "envelope"
    _, _, pos = _head(data, 0, field_)  # tag 18
    _, _, pos = _head(data, pos, field_)  # the array of 4
    _, length, pos = _head(data, pos, field_)  # protected bstr
    _, declared, _ = _head(data, pos + length, field_)  # the unprotected map
    _check_header(header, declared, "envelope.unprotected")


def _check_header(header: Mapping[Any, Any], declared: int, where: str) -> None:
    if declared > MAX_HEADERS:
        raise LimitExceeded(where, f"{declared} header labels exceed {MAX_HEADERS}")
    if declared != len(header):
        raise SchemaError(where, "a label appears twice (RFC 9052 3: such a message must not be processed)")
    for label, value in header.items():
        if _has_tag(value):
            raise SchemaError(f"{where}.{_name(label)}", "tags are not accepted inside a header")


def _has_tag(value: Any) -> bool:
    """Depth is bounded by the scan (Limits.max_depth), so recursion is too."""
    if isinstance(value, cbor2.CBORTag):
        return True
    if isinstance(value, Mapping):
        return any(_has_tag(k) or _has_tag(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_tag(v) for v in value)
    return False


def _algorithm(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> int:
    """Only a protected algorithm counts: an unprotected one could be swapped in transit (RFC 9052 3.1)."""
    if HEADER_ALG in unprotected:
        raise SchemaError("envelope.unprotected.alg", "the algorithm must be in the protected header")
    alg = protected.get(HEADER_ALG)
    if alg is None:
        raise SchemaError("envelope.protected.alg", "missing: a signed message names its algorithm (label 1)")
    if not _is_int(alg):
        raise SchemaError("envelope.protected.alg", f"must be an integer, not {type(alg).__name__}")
    return int(alg)


def _check_crit(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> None:
    """RFC 9052 3.1: crit is protected, lists labels present in the protected header, and each must be understood."""
    if HEADER_CRIT in unprotected:
        raise SchemaError("envelope.unprotected.crit", "crit must be in the protected header")
    if HEADER_CRIT not in protected:
        return
    crit = protected[HEADER_CRIT]
    if not isinstance(crit, list | tuple) or not crit:
        raise SchemaError("envelope.protected.crit", "must be a non-empty array of labels")
    for label in crit:
        if not (_is_int(label) or isinstance(label, str)):
            raise SchemaError("envelope.protected.crit", "labels are integers or text")
        if label not in protected:
            raise SchemaError("envelope.protected.crit", f"lists {_name(label)}, which the protected header lacks")
        if label not in UNDERSTOOD:
            raise ValueRejected("envelope.protected.crit", f"label {_name(label)} is critical and not understood")


def _key_id(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> bytes:
    """The kid, from either bucket (RFC 9052 allows both; tinyfed writes it unprotected)."""
    where = "envelope.protected.kid" if HEADER_KID in protected else "envelope.unprotected.kid"
    key_id = protected.get(HEADER_KID, unprotected.get(HEADER_KID))
    if key_id is None:
        raise SchemaError(where, "missing: a signed tinyfed message names its key (label 4)")
    if not isinstance(key_id, bytes) or not key_id:
        raise SchemaError(where, "must be a non-empty byte string")
    if len(key_id) > MAX_KEY_ID_BYTES:
        raise LimitExceeded(where, f"{len(key_id)} bytes exceed {MAX_KEY_ID_BYTES}")
    return key_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _name(label: Any) -> str:
    """A label for a field path, bounded: text labels are the sender's to choose."""
    name = LABEL_NAMES.get(label) if _is_int(label) else None
    return name or repr(label)[:32]


def key_id_for(public_key: Any, size: int = 8) -> bytes:
    """The first ``size`` bytes of the Ed25519 key's COSE Key Thumbprint (RFC 9679): a kid both ends derive.

    Eight bytes name a key among a federation's devices with a collision
    chance near n^2 / 2^65; a collision cannot forge anything (the signature
    still has to verify), and provisioning should refuse one when it mints keys.
    """
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if not 1 <= size <= 32:
        raise ValueError(f"a thumbprint prefix is 1..32 bytes, not {size}")
    x = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(dumps({1: OKP, -1: CRV_ED25519, -2: x})).digest()[:size]


@dataclass
class Ed25519Signer:
    private_key: Any  # cryptography Ed25519PrivateKey
    key_id: bytes
    alg: int = ALG_EDDSA

    @classmethod
    def generate(cls, key_id: bytes | None = None) -> Ed25519Signer:
        """A fresh key; its key id is its thumbprint prefix unless one is given."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        return cls(key, key_id if key_id is not None else key_id_for(key.public_key()))

    def sign(self, to_be_signed: bytes) -> bytes:
        return bytes(self.private_key.sign(to_be_signed))

    def public_key(self) -> Any:
        return self.private_key.public_key()


@dataclass
class Ed25519Verifier:
    keys: dict[bytes, Any] = field(default_factory=dict)  # key id -> Ed25519PublicKey

    def verify(self, key_id: bytes, alg: int, to_be_signed: bytes, signature: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        if alg not in (ALG_EDDSA, ALG_ED25519):
            raise ValueRejected("envelope.protected.alg", f"algorithm {alg} not accepted (EdDSA -8 or Ed25519 -19 is)")
        key = self.keys.get(key_id)
        if key is None:
            raise ValueRejected("envelope.unprotected.kid", f"unknown key id {key_id.hex()}")
        if len(signature) != ED25519_SIGNATURE_BYTES:
            raise ValueRejected("envelope.signature", f"{len(signature)} bytes; an Ed25519 signature is 64")
        try:
            key.verify(signature, to_be_signed)
        except InvalidSignature as exc:
            raise ValueRejected("envelope.signature", "signature does not verify") from exc
