"""The COSE_Sign1 envelope against what others publish and against what an attacker sends.

Conformance: the COSE working group's examples (tests/vectors/cose.json)
verify with ours and our signer reproduces their signature byte for byte;
pycose (an independent implementation, test-only) verifies ours, ours
verifies its, and for the same key, headers and payload both write the same
bytes (Ed25519 is deterministic). Hostility: every malformed envelope is
refused with a WireError naming the field, and random damage never crashes.
The signed form's CDDL in docs/protocol.md is checked as far as pycddl can.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pycddl
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm, Critical
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from edge_runtime import wire
from edge_runtime.wire import DEFAULT_LIMITS, Ed25519Signer, Ed25519Verifier, open_envelope, sign
from edge_runtime.wire.envelope import MAX_HEADERS, MAX_KEY_ID_BYTES, MAX_SIGNATURE_BYTES, _to_be_signed

ROOT = Path(__file__).resolve().parents[1]
COSE = {v["name"]: v for v in json.loads((ROOT / "tests" / "vectors" / "cose.json").read_text())["vectors"]}
RFC8032_TEST1 = COSE["eddsa-sig-01"]  # the key of eddsa-sig-01 is RFC 8032's first Ed25519 test key
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_TEST1["d_hex"]))
KID_BYTES = b"device-0001-key"
SIGNER = Ed25519Signer(PRIVATE, KID_BYTES)
VERIFIER = Ed25519Verifier({KID_BYTES: PRIVATE.public_key()})
UPDATE = wire.encode(
    wire.Update(
        bytes(range(16)),
        "device-0001",
        3,
        bytes(32),
        120,
        [
            wire.TensorUpdate(
                0, 40, np.arange(0, 40, 8), wire.CodedValues(wire.ValueCoding.INT8, np.arange(-2, 3), 0.01)
            )
        ],
    )
)


# ---------------------------------------------------------------- the COSE working group's examples


def test_our_sig_structure_is_the_one_the_cose_wg_example_signs() -> None:
    for vector in COSE.values():
        protected, _, payload, _ = cbor2.loads(bytes.fromhex(vector["cbor_hex"])).value
        assert _to_be_signed(protected, payload) == bytes.fromhex(vector["to_be_signed_hex"]), vector["name"]


def test_the_cose_wg_ed25519_example_verifies_with_ours() -> None:
    vector = COSE["eddsa-sig-01"]
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(vector["x_hex"]))
    opened = open_envelope(bytes.fromhex(vector["cbor_hex"]), DEFAULT_LIMITS, Ed25519Verifier({b"11": key}))
    assert opened.verified and opened.key_id == vector["kid"].encode()
    assert opened.payload == vector["plaintext"].encode()  # its protected header also holds content type 0


def test_our_signer_reproduces_the_cose_wg_signature_and_message_byte_for_byte() -> None:
    vector = COSE["eddsa-sig-01"]
    published = bytes.fromhex(vector["cbor_hex"])
    protected, unprotected, payload, signature = cbor2.loads(published).value
    ours = Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["d_hex"])), b"11")
    assert ours.sign(_to_be_signed(protected, payload)) == signature
    assert ours.public_key().public_bytes_raw().hex() == vector["x_hex"]
    rebuilt = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), payload, signature]), canonical=True)
    assert rebuilt == published


def test_the_cose_wg_ed448_example_under_the_same_alg_is_refused_by_an_ed25519_verifier() -> None:
    """alg -8 does not name a curve (the reason RFC 9864 deprecates it): the key decides, and ours are Ed25519."""
    vector = COSE["eddsa-sig-02"]
    verifier = Ed25519Verifier({vector["kid"].encode(): PRIVATE.public_key()})
    with pytest.raises(wire.ValueRejected) as refused:
        open_envelope(bytes.fromhex(vector["cbor_hex"]), DEFAULT_LIMITS, verifier)
    assert refused.value.field == "envelope.signature" and "114 bytes" in str(refused.value)


def test_a_cose_wg_example_with_one_payload_bit_flipped_is_refused() -> None:
    vector = COSE["eddsa-sig-01"]
    data = bytearray(bytes.fromhex(vector["cbor_hex"]))
    data[data.index(b"This") + 1] ^= 0x01
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(vector["x_hex"]))
    with pytest.raises(wire.ValueRejected) as refused:
        open_envelope(bytes(data), DEFAULT_LIMITS, Ed25519Verifier({b"11": key}))
    assert refused.value.field == "envelope.signature"


# ---------------------------------------------------------------- pycose, an independent implementation


def pycose_key(private: bool = True) -> OKPKey:
    raw = PRIVATE.public_key().public_bytes_raw()
    return OKPKey(crv=Ed25519, x=raw, d=PRIVATE.private_bytes_raw() if private else b"")


def pycose_signed(payload: bytes, phdr: dict[Any, Any], uhdr: dict[Any, Any]) -> bytes:
    message = Sign1Message(phdr=phdr, uhdr=uhdr, payload=payload)
    message.key = pycose_key()
    return bytes(message.encode())


def test_what_pycose_signs_verifies_with_ours_and_decodes_to_the_message() -> None:
    data = pycose_signed(UPDATE, {Algorithm: EdDSA}, {KID: KID_BYTES})
    opened = open_envelope(data, DEFAULT_LIMITS, VERIFIER, require_signature=True)
    assert opened.verified and opened.key_id == KID_BYTES and opened.payload == UPDATE
    assert wire.encode(wire.decode(data, verifier=VERIFIER, require_signature=True)) == UPDATE


def test_a_pycose_message_with_the_kid_protected_verifies_with_ours() -> None:
    data = pycose_signed(UPDATE, {Algorithm: EdDSA, KID: KID_BYTES}, {})
    opened = open_envelope(data, DEFAULT_LIMITS, VERIFIER)
    assert opened.verified and opened.key_id == KID_BYTES


def pycose_decoded(data: bytes) -> Sign1Message:
    """pycose 1.1.0's own ``decode`` wants a list inside the tag, and cbor2 6 builds a tuple: hand it the list."""
    obj = cbor2.loads(data)
    assert obj.tag == 18
    return Sign1Message.from_cose_obj([dict(m) if isinstance(m, Mapping) else m for m in obj.value], True)


def test_what_we_sign_verifies_with_pycose() -> None:
    received = pycose_decoded(sign(UPDATE, SIGNER))
    received.key = pycose_key(private=False)
    assert received.verify_signature()
    assert received.payload == UPDATE
    assert received.phdr == {Algorithm: EdDSA} and received.uhdr == {KID: KID_BYTES}


def test_ours_and_pycose_write_the_same_bytes_for_the_same_key_headers_and_payload() -> None:
    ours = sign(UPDATE, SIGNER)
    assert ours == pycose_signed(UPDATE, {Algorithm: EdDSA}, {KID: KID_BYTES})
    assert ours == sign(UPDATE, SIGNER)  # deterministic: the same bytes every time


def test_a_pycose_message_marking_an_unknown_header_critical_is_refused() -> None:
    data = pycose_signed(UPDATE, {Algorithm: EdDSA, Critical: [99], 99: 1}, {KID: KID_BYTES})
    with pytest.raises(wire.ValueRejected) as refused:
        open_envelope(data, DEFAULT_LIMITS, VERIFIER)
    assert refused.value.field == "envelope.protected.crit" and "99" in str(refused.value)


def test_a_critical_algorithm_is_understood() -> None:
    data = pycose_signed(UPDATE, {Algorithm: EdDSA, Critical: [1]}, {KID: KID_BYTES})
    assert open_envelope(data, DEFAULT_LIMITS, VERIFIER).verified


# ---------------------------------------------------------------- round trips and policy


def head(length: int) -> int:
    """Bytes of a CBOR byte-string head for ``length`` bytes."""
    return 1 if length < 24 else 2 if length < 256 else 3 if length < 65536 else 5


def envelope_overhead(key_id: int, payload: int) -> int:
    """What COSE_Sign1 adds to a message, item by item (RFC 9052 layout, as docs/protocol.md gives it)."""
    tag_and_array = 1 + 1
    protected = 1 + 3  # bstr head + {1: -8}
    unprotected = 1 + 1 + head(key_id) + key_id  # map head, label 4, kid
    return tag_and_array + protected + unprotected + head(payload) + head(64) + 64


def test_a_signed_update_round_trips_through_the_codec() -> None:
    data = sign(UPDATE, SIGNER)
    assert wire.encode(wire.decode(data, verifier=VERIFIER, require_signature=True)) == UPDATE
    assert len(data) - len(UPDATE) == envelope_overhead(len(KID_BYTES), len(UPDATE))


def test_the_fully_specified_ed25519_identifier_is_accepted() -> None:
    data = sign(UPDATE, Ed25519Signer(PRIVATE, KID_BYTES, alg=-19))
    assert open_envelope(data, DEFAULT_LIMITS, VERIFIER).verified


def test_key_ids_are_the_rfc_9679_thumbprint_prefix() -> None:
    """COSE_Key {1: 1 (OKP), -1: 6 (Ed25519), -2: x} in deterministic CBOR, hashed with SHA-256."""
    import hashlib

    x = bytes.fromhex(RFC8032_TEST1["x_hex"])
    thumbprint = hashlib.sha256(bytes.fromhex("a3010120062158 20".replace(" ", "")) + x).digest()
    assert wire.key_id_for(PRIVATE.public_key()) == thumbprint[:8]
    assert wire.key_id_for(PRIVATE.public_key(), 32) == thumbprint
    generated = Ed25519Signer.generate()
    assert generated.key_id == wire.key_id_for(generated.public_key())


def test_a_key_id_receivers_would_refuse_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="key id of 65 bytes"):
        sign(UPDATE, Ed25519Signer(PRIVATE, bytes(65)))


def test_an_unsigned_message_is_refused_where_signatures_are_required() -> None:
    with pytest.raises(wire.ValueRejected) as refused:
        wire.decode(UPDATE, verifier=VERIFIER, require_signature=True)
    assert refused.value.field == "envelope"


def test_a_signed_message_without_a_verifier_is_refused_where_signatures_are_required() -> None:
    with pytest.raises(wire.ValueRejected) as refused:
        open_envelope(sign(UPDATE, SIGNER), DEFAULT_LIMITS, None, require_signature=True)
    assert refused.value.field == "envelope" and "no verifier" in str(refused.value)


def test_another_devices_key_does_not_verify() -> None:
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(wire.ValueRejected) as refused:
        open_envelope(sign(UPDATE, SIGNER), DEFAULT_LIMITS, Ed25519Verifier({KID_BYTES: other}))
    assert refused.value.field == "envelope.signature"


# ---------------------------------------------------------------- hostile envelopes


def envelope(
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = UPDATE,
    signature: Any = "sign",
    *,
    tag: int = 18,
) -> bytes:
    """A COSE_Sign1 with the parts given, validly signed over them unless a signature is given."""
    protected = cbor2.dumps({1: -8}) if protected is None else protected
    unprotected = {4: KID_BYTES} if unprotected is None else unprotected
    if signature == "sign":
        signature = PRIVATE.sign(_to_be_signed(protected, payload if isinstance(payload, bytes) else b""))
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected, payload, signature]))


def raw_map(*pairs: tuple[bytes, bytes]) -> bytes:
    """A CBOR map written pair by pair, so a key can repeat (cbor2 never writes that)."""
    return bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)


def raw_envelope(protected: bytes, unprotected_map: bytes) -> bytes:
    """Tag 18 over an array whose unprotected map is given as bytes."""
    signature = PRIVATE.sign(_to_be_signed(protected, UPDATE))
    return b"\xd2\x84" + cbor2.dumps(protected) + unprotected_map + cbor2.dumps(UPDATE) + cbor2.dumps(signature)


KID_PAIR = (cbor2.dumps(4), cbor2.dumps(KID_BYTES))
SIGNED = sign(UPDATE, SIGNER)
# name: (bytes, error class, field)
HOSTILE: dict[str, tuple[bytes, type[wire.WireError], str]] = {
    "alg only unprotected": (
        envelope(cbor2.dumps({3: 0}), {1: -8, 4: KID_BYTES}),
        wire.SchemaError,
        "envelope.unprotected.alg",
    ),
    "alg in both buckets": (envelope(unprotected={1: -8, 4: KID_BYTES}), wire.SchemaError, "envelope.unprotected.alg"),
    "alg missing": (envelope(cbor2.dumps({3: 0})), wire.SchemaError, "envelope.protected.alg"),
    "empty protected header": (envelope(b""), wire.SchemaError, "envelope.protected.alg"),
    "alg as text": (envelope(cbor2.dumps({1: "EdDSA"})), wire.SchemaError, "envelope.protected.alg"),
    "alg true": (envelope(cbor2.dumps({1: True})), wire.SchemaError, "envelope.protected.alg"),
    "alg ES256": (envelope(cbor2.dumps({1: -7})), wire.ValueRejected, "envelope.protected.alg"),
    "alg repeated, ours last": (
        envelope(raw_map((b"\x01", b"\x26"), (b"\x01", b"\x27"))),
        wire.SchemaError,
        "envelope.protected",
    ),
    "crit with an unknown label": (
        envelope(cbor2.dumps({1: -8, 2: [99], 99: 1})),
        wire.ValueRejected,
        "envelope.protected.crit",
    ),
    "crit with a text label": (
        envelope(cbor2.dumps({1: -8, 2: ["x"], "x": 1})),
        wire.ValueRejected,
        "envelope.protected.crit",
    ),
    "crit unprotected": (envelope(unprotected={2: [1], 4: KID_BYTES}), wire.SchemaError, "envelope.unprotected.crit"),
    "crit empty": (envelope(cbor2.dumps({1: -8, 2: []})), wire.SchemaError, "envelope.protected.crit"),
    "crit not an array": (envelope(cbor2.dumps({1: -8, 2: 1})), wire.SchemaError, "envelope.protected.crit"),
    "crit naming an absent label": (
        envelope(cbor2.dumps({1: -8, 2: [4]})),
        wire.SchemaError,
        "envelope.protected.crit",
    ),
    "kid missing": (envelope(unprotected={}), wire.SchemaError, "envelope.unprotected.kid"),
    "kid as text": (envelope(unprotected={4: "device-0001"}), wire.SchemaError, "envelope.unprotected.kid"),
    "kid empty": (envelope(unprotected={4: b""}), wire.SchemaError, "envelope.unprotected.kid"),
    "kid too long": (
        envelope(unprotected={4: b"k" * (MAX_KEY_ID_BYTES + 1)}),
        wire.LimitExceeded,
        "envelope.unprotected.kid",
    ),
    "kid of 100 kB": (envelope(unprotected={4: b"k" * 100_000}), wire.LimitExceeded, "envelope.unprotected.kid"),
    "kid protected too long": (
        envelope(cbor2.dumps({1: -8, 4: bytes(MAX_KEY_ID_BYTES + 1)}), {}),
        wire.LimitExceeded,
        "envelope.protected.kid",
    ),
    "kid in both buckets": (
        envelope(cbor2.dumps({1: -8, 4: KID_BYTES})),
        wire.SchemaError,
        "envelope.unprotected.kid",
    ),
    "kid unknown": (envelope(unprotected={4: b"someone-else"}), wire.ValueRejected, "envelope.unprotected.kid"),
    "kid repeated": (
        raw_envelope(cbor2.dumps({1: -8}), raw_map(KID_PAIR, KID_PAIR)),
        wire.SchemaError,
        "envelope.unprotected",
    ),
    "too many unprotected labels": (
        envelope(unprotected={4: KID_BYTES} | {100 + i: 0 for i in range(MAX_HEADERS)}),
        wire.LimitExceeded,
        "envelope.unprotected",
    ),
    "too many protected labels": (
        envelope(cbor2.dumps({1: -8} | {100 + i: 0 for i in range(MAX_HEADERS)})),
        wire.LimitExceeded,
        "envelope.protected",
    ),
    "a signed message in an unprotected header": (
        envelope(unprotected={4: KID_BYTES, 7: cbor2.CBORTag(18, [b"", {}, b"x", b"s"])}),
        wire.SchemaError,
        "envelope.unprotected.7",
    ),
    "a typed array in the protected header": (
        envelope(cbor2.dumps({1: -8, "ctr": cbor2.CBORTag(64, b"\x01")})),
        wire.SchemaError,
        "envelope.protected.'ctr'",
    ),
    "protected header an array": (envelope(cbor2.dumps([1, -8])), wire.SchemaError, "envelope.protected"),
    "protected header truncated": (envelope(cbor2.dumps({1: -8})[:-1]), wire.MalformedCBOR, "envelope.protected"),
    "protected header with a trailing byte": (
        envelope(cbor2.dumps({1: -8}) + b"\x00"),
        wire.MalformedCBOR,
        "envelope.protected",
    ),
    "protected header as a map, not bytes": (envelope({1: -8}), wire.SchemaError, "envelope.protected"),
    "unprotected header as bytes": (envelope(unprotected=b"\xa1\x04\x41k"), wire.SchemaError, "envelope.unprotected"),
    "payload detached (nil)": (envelope(payload=None), wire.SchemaError, "envelope.payload"),
    "payload as text": (envelope(payload="update"), wire.SchemaError, "envelope.payload"),
    "payload empty": (envelope(payload=b""), wire.SchemaError, "envelope.payload"),
    "payload a signed message": (envelope(payload=SIGNED), wire.SchemaError, "envelope.payload"),
    "payload a typed array": (
        envelope(payload=cbor2.dumps(cbor2.CBORTag(72, b"\x01"))),
        wire.SchemaError,
        "envelope.payload",
    ),
    "payload not CBOR": (envelope(payload=b"\xff\xff"), wire.MalformedCBOR, "message"),
    "signature missing": (
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {4: KID_BYTES}, UPDATE])),
        wire.SchemaError,
        "envelope",
    ),
    "signature empty": (envelope(signature=b""), wire.SchemaError, "envelope.signature"),
    "signature as text": (envelope(signature="sig"), wire.SchemaError, "envelope.signature"),
    "signature of 63 bytes": (envelope(signature=bytes(63)), wire.ValueRejected, "envelope.signature"),
    "signature over the size bound": (
        envelope(signature=bytes(MAX_SIGNATURE_BYTES + 1)),
        wire.LimitExceeded,
        "envelope.signature",
    ),
    "signature of zeros": (envelope(signature=bytes(64)), wire.ValueRejected, "envelope.signature"),
    "signature over other bytes": (
        envelope(signature=PRIVATE.sign(_to_be_signed(cbor2.dumps({1: -8}), UPDATE + b"x"))),
        wire.ValueRejected,
        "envelope.signature",
    ),
    "protected header changed after signing": (
        envelope(cbor2.dumps({1: -8, 3: 0}), signature=cbor2.loads(SIGNED).value[3]),
        wire.ValueRejected,
        "envelope.signature",
    ),
    "five members": (
        cbor2.dumps(cbor2.CBORTag(18, [*cbor2.loads(SIGNED).value, b""])),
        wire.SchemaError,
        "envelope",
    ),
    "a map under tag 18": (cbor2.dumps(cbor2.CBORTag(18, {1: 2})), wire.SchemaError, "envelope"),
    "tag 18 in tag 18": (cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(SIGNED))), wire.SchemaError, "envelope"),
    "a typed array under tag 18": (
        cbor2.dumps(cbor2.CBORTag(18, cbor2.CBORTag(64, b"x"))),
        wire.SchemaError,
        "envelope",
    ),
    "COSE_Mac0 (tag 17)": (envelope(tag=17), wire.MalformedCBOR, "envelope"),
    "COSE_Sign (tag 98)": (envelope(tag=98), wire.MalformedCBOR, "envelope"),
    "a typed array at the top": (cbor2.dumps(cbor2.CBORTag(64, b"x")), wire.SchemaError, "envelope"),
    "untagged COSE_Sign1 where signatures are required": (
        cbor2.dumps(cbor2.loads(SIGNED).value),
        wire.ValueRejected,
        "envelope",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_envelope_is_refused_naming_the_field(case: str) -> None:
    data, error, field = HOSTILE[case]
    with pytest.raises(wire.WireError) as refused:
        wire.decode(data, verifier=VERIFIER, require_signature=True)
    assert type(refused.value) is error, f"{case}: {refused.value!r}"
    assert refused.value.field == field, f"{case}: {refused.value}"
    assert len(str(refused.value)) < 200  # nothing the sender chose is echoed at length


def test_the_hostile_cases_fail_only_for_their_own_reason() -> None:
    """The helpers build valid envelopes: without the damage, the same bytes verify."""
    assert open_envelope(envelope(), DEFAULT_LIMITS, VERIFIER).verified
    assert open_envelope(raw_envelope(cbor2.dumps({1: -8}), raw_map(KID_PAIR)), DEFAULT_LIMITS, VERIFIER).verified
    assert open_envelope(envelope(raw_map((b"\x01", b"\x27"))), DEFAULT_LIMITS, VERIFIER).verified


def mutations() -> st.SearchStrategy[bytes]:
    flip = st.tuples(st.integers(0, len(SIGNED) - 1), st.integers(1, 255)).map(
        lambda p: SIGNED[: p[0]] + bytes([SIGNED[p[0]] ^ p[1]]) + SIGNED[p[0] + 1 :]
    )
    cut = st.integers(0, len(SIGNED) - 1).map(lambda n: SIGNED[:n])
    insert = st.tuples(st.integers(0, len(SIGNED)), st.binary(min_size=1, max_size=8)).map(
        lambda p: SIGNED[: p[0]] + p[1] + SIGNED[p[0] :]
    )
    return st.one_of(flip, cut, insert)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_damaged_signed_bytes_are_refused_or_still_the_signed_message(data: bytes) -> None:
    """Nothing but a WireError comes out, and nothing decodes to a message the key did not sign."""
    try:
        message = wire.decode(data, verifier=VERIFIER, require_signature=True)
    except wire.WireError:
        return
    assert wire.encode(message) == UPDATE  # e.g. a changed kid byte that no key has would have been refused


# ---------------------------------------------------------------- the CDDL of the signed form

DOCS_CDDL = "\n".join(
    re.findall(r"^```cddl\n(.*?)^```", (ROOT / "docs" / "protocol.md").read_text(), re.S | re.M)
    + re.findall(r"^```cddl\n(.*?)^```", (ROOT / "docs" / "serial-protocol.md").read_text(), re.S | re.M)
)
# pycddl 0.6.4 (the Rust cddl crate) applies a `.cbor` control inside an array to the wrong member: it
# refuses every COSE_Sign1, right or wrong ("array item at index 1 must be a byte string for .cbor
# control"), while a `.cbor` at the top of a rule works. So the array's shape is checked with the
# controls taken out, and each embedded item against its own rule.
WITHOUT_EMBEDDED = re.sub(r"\bbstr \.cbor [\w-]+", "bstr", DOCS_CDDL)


def cddl(rule: str, text: str = DOCS_CDDL) -> Callable[[bytes], bool]:
    schema = pycddl.Schema(f"checked-rule = {rule}\n{text}")

    def accepts(data: bytes) -> bool:
        try:
            schema.validate_cbor(data)
        except pycddl.ValidationError:
            return False
        return True

    return accepts


def test_the_docs_state_the_embedded_rules_and_pycddl_still_mishandles_them() -> None:
    assert "protected: bstr .cbor protected-header" in DOCS_CDDL and "payload: bstr .cbor plain-message" in DOCS_CDDL
    # When a pycddl release fixes this, the workaround above can go and signed-message be checked whole.
    assert not cddl("signed-message")(SIGNED)


def test_what_we_sign_matches_the_cddl_of_the_signed_form() -> None:
    protected, unprotected, payload, signature = cbor2.loads(SIGNED).value
    assert cddl("signed-message", WITHOUT_EMBEDDED)(SIGNED)
    assert cddl("protected-header")(protected)
    assert cddl("unprotected-header")(cbor2.dumps(dict(unprotected)))
    assert cddl("plain-message")(payload)
    assert cddl("bstr .size 64")(cbor2.dumps(signature))
    assert cddl("sig-structure")(_to_be_signed(protected, payload))
    assert cddl("message", WITHOUT_EMBEDDED)(SIGNED)


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("signature of 63 bytes", "signed-message"),
        ("five members", "signed-message"),
        ("kid too long", "signed-message"),
        ("kid missing", "signed-message"),
        ("signature missing", "signed-message"),
    ],
)
def test_the_cddl_refuses_damaged_envelopes_the_decoder_refuses(case: str, rule: str) -> None:
    assert not cddl(rule, WITHOUT_EMBEDDED)(HOSTILE[case][0])


def test_the_cddl_refuses_headers_and_payloads_the_decoder_refuses() -> None:
    assert not cddl("protected-header")(cbor2.dumps({1: -7}))
    assert not cddl("protected-header")(cbor2.dumps({1: "EdDSA"}))
    assert not cddl("unprotected-header")(cbor2.dumps({4: "device-0001"}))
    assert not cddl("plain-message")(SIGNED)  # the payload is never another envelope


# ---------------------------------------------------------------- the cost, as a user measures it


def test_tinyfed_bench_signing_writes_its_figures(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tinyfed", "bench", "signing", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "signing.json").read_text())
    figures, details = result["figures"], result["details"]
    from bench.suite import HEADLINES

    for key in HEADLINES["signing"]:
        assert figures[key] > 0, key
    for arch, d in details["updates"].items():
        # bytes are counted, not estimated: the signed update is the unsigned one plus signature and headers
        assert d["signed_bytes"] - d["unsigned_bytes"] == envelope_overhead(d["key_id_bytes"], d["unsigned_bytes"])
        assert d["mac_bytes"] < d["signed_bytes"], arch
        assert figures[f"{arch}_signed_bytes_ratio"] == pytest.approx(d["signed_bytes"] / d["unsigned_bytes"])
    assert "non-repudiation" in run.stdout and "gateway alone" in run.stdout
    assert "cryptography" in json.dumps(details["libraries"])
