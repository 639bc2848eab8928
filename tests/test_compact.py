"""The compact update (type 10): golden vectors, agreement with the CBOR update, refusals, hostile bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.compress import CompressionConfig, Compressor
from edge_runtime.wire import CodedValues, TensorUpdate, ValueCoding
from tests.vectors.generate import build_compact
from tests.wire_json import to_json

VECTORS = json.loads((Path(__file__).parent / "vectors" / "compact.json").read_text())
SPEC = {int(k): v for k, v in VECTORS["spec"].items()}
DEVICE = VECTORS["device"]
VERSIONS = [bytes.fromhex(v) for v in VECTORS["versions"]]
BASE = VERSIONS[1]


def decode(data: bytes, **kw: object) -> wire.Update:
    args: dict[str, object] = {"spec": SPEC, "device": DEVICE, "versions": VERSIONS} | kw
    return wire.decode(data, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_golden_compact_vector_decodes_to_its_meaning_and_reencodes_byte_exact(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    update = decode(data)
    assert to_json(update) == vector["decoded"]
    assert wire.encode_compact(update, SPEC) == data


@pytest.mark.parametrize("vector", VECTORS["refused"], ids=lambda v: v["name"])
def test_golden_compact_refusal_names_its_field(vector: dict) -> None:
    with pytest.raises(wire.WireError) as info:
        decode(bytes.fromhex(vector["hex"]))
    assert type(info.value).__name__ == vector["error"]
    assert info.value.field.startswith(vector["field"])


def test_committed_compact_vectors_match_the_codec() -> None:
    assert build_compact() == VECTORS, "compact format changed: run python -m tests.vectors.generate, review the diff"


def real_update(density: float, seed: int = 0, **config: object) -> tuple[wire.Update, dict[int, int]]:
    rng = np.random.default_rng(seed)
    deltas = {2: rng.normal(0, 0.01, (64, 64)), 3: rng.normal(0, 0.01, 64), 5: rng.laplace(0, 0.02, (32, 64))}
    result = Compressor(CompressionConfig(density=density, **config)).compress(deltas)  # type: ignore[arg-type]
    spec = {t: d.size for t, d in deltas.items()}
    return wire.Update(wire.new_update_id(), DEVICE, 7, BASE, 321, result.tensors), spec


def same(a: wire.Update, b: wire.Update) -> None:
    assert (a.update_id, a.device, a.round, a.base_version, a.samples) == (
        b.update_id, b.device, b.round, b.base_version, b.samples)  # fmt: skip
    assert (a.metrics, a.activation_ranges, a.created, a.below_clip) == (
        b.metrics, b.activation_ranges, b.created, b.below_clip)  # fmt: skip
    assert [t.tensor for t in a.tensors] == [t.tensor for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.numel == y.numel and x.values.coding == y.values.coding and x.values.scale == y.values.scale
        assert np.array_equal(x.indices, y.indices) and np.array_equal(x.values.codes, y.values.codes)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.1, 0.6, 1.0])
@pytest.mark.parametrize("coding", [ValueCoding.INT8, ValueCoding.TERNARY])
def test_compact_and_cbor_decode_to_the_same_update_and_compact_is_smaller(density: float, coding: ValueCoding) -> None:
    update, spec = real_update(density, value_coding=coding)
    compact, cbor = wire.encode_compact(update, spec), wire.encode(update)
    got = decode(compact, spec=spec)
    same(got, update)  # exactly what was sent; CBOR may send a dense tensor's zeros, so compare meanings there
    by_cbor = {t.tensor: t.dense() for t in wire.decode(cbor, spec=spec).tensors}
    assert {t.tensor for t in got.tensors} == set(by_cbor)
    assert all(np.array_equal(t.dense(), by_cbor[t.tensor]) for t in got.tensors)
    if density <= 0.1:  # the layout is for sparse updates; a mostly dense one may be a little larger than CBOR's
        assert len(compact) < len(cbor)


def test_compressor_scales_are_bfloat16_so_they_take_16_bits() -> None:
    update, spec = real_update(0.01)
    for t in update.tensors:
        word = int(np.array([t.values.scale], "<f4").view("<u4")[0])
        assert word & 0xFFFF == 0
    # A clipped update's shrunk scale is no bfloat16: it is sent in 32 bits, exactly.
    clipped, spec = real_update(0.01, clip=0.01)
    same(decode(wire.encode_compact(clipped, spec), spec=spec), clipped)


def test_extras_clip_bit_and_report_fields_round_trip() -> None:
    update, spec = real_update(0.01)
    update.metrics = {"loss": 0.25, "accuracy": 0.5}
    update.activation_ranges = {2: (-1.0, 3.0), 5: (0.0, 6.0)}
    update.created = 1_800_000_000
    update.below_clip = False
    same(decode(wire.encode_compact(update, spec), spec=spec), update)


def test_the_receiver_supplies_device_and_resolves_the_base_version() -> None:
    update, spec = real_update(0.01)
    data = wire.encode_compact(update, spec)
    assert decode(data, spec=spec, device="another").device == "another"
    unknown = decode(data, spec=spec, versions=[VERSIONS[0]])
    assert unknown.base_version == BASE[:4]  # no known version has the prefix: the gateway refuses it as unknown
    twin = BASE[:4] + hashlib.sha256(b"twin").digest()[4:]
    with pytest.raises(wire.ValueRejected, match="matches 2 known versions"):
        decode(data, spec=spec, versions=[BASE, twin])


def test_tensors_without_a_spec_or_a_wrong_expectation_are_refused_by_name() -> None:
    update, spec = real_update(0.01)
    data = wire.encode_compact(update, spec)
    with pytest.raises(wire.SchemaError, match=r"update\.tensors: .*spec"):
        wire.decode(data, device=DEVICE)
    with pytest.raises(wire.SchemaError, match="Update where Task was expected"):
        wire.decode(data, expect=wire.Task, spec=spec)
    with pytest.raises(wire.ValueRejected, match="signatures"):
        wire.decode(data, spec=spec, require_signature=True)
    assert wire.peek_type(data) == wire.MSG_UPDATE_COMPACT
    assert wire.open_envelope(data, wire.DEFAULT_LIMITS).payload == data  # a receiver's trust layer lets it through
    with pytest.raises(wire.ValueRejected, match="signatures"):
        wire.open_envelope(data, wire.DEFAULT_LIMITS, require_signature=True)


def test_a_signed_compact_update_opens_and_decodes() -> None:
    key = Ed25519PrivateKey.generate()
    update, spec = real_update(0.01)
    signed = wire.sign(wire.encode_compact(update, spec), wire.Ed25519Signer(key, b"k1"))
    verifier = wire.Ed25519Verifier({b"k1": key.public_key()})
    got = wire.decode(signed, spec=spec, device=DEVICE, versions=VERSIONS, verifier=verifier, require_signature=True)
    same(got, update)


def test_what_the_compact_layout_cannot_carry_is_refused_at_encoding() -> None:
    update, spec = real_update(0.01)
    with pytest.raises(wire.CompactEncodingError, match="8 random bytes"):
        wire.encode_compact(wire.Update(bytes(range(16)), DEVICE, 1, BASE, 1, update.tensors), spec)
    floats = TensorUpdate(2, 4096, np.array([1, 5]), CodedValues(ValueCoding.FLOAT32, np.array([0.5, 1.0], np.float32)))
    with pytest.raises(wire.CompactEncodingError, match="int8 or ternary"):
        wire.encode_compact(wire.Update(wire.new_update_id(), DEVICE, 1, BASE, 1, [floats]), spec)
    with pytest.raises(wire.CompactEncodingError, match="not in the model's spec"):
        wire.encode_compact(update, {9: 10})


def test_bounds_hold_against_a_hostile_sender() -> None:
    update, spec = real_update(0.1)
    data = wire.encode_compact(update, spec)
    with pytest.raises(wire.LimitExceeded, match="bytes exceed"):
        decode(data, spec=spec, limits=wire.Limits(max_message_bytes=len(data) - 1))
    with pytest.raises(wire.LimitExceeded, match="entries"):
        decode(data, spec=spec, limits=wire.Limits(max_nnz=10))
    with pytest.raises(wire.LimitExceeded, match="tensors exceed"):
        decode(data, spec=spec, limits=wire.Limits(max_tensors=1))


SEEDS = [bytes.fromhex(v["hex"]) for v in VECTORS["valid"]] + [wire.encode_compact(*real_update(0.05, seed=3))]


@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 10_000),
)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_compact_updates_only_ever_raise_wire_errors(base: bytes, flips: list, cut: int) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    data[0] = wire.MSG_UPDATE_COMPACT
    data = data[: max(1, len(data) - cut % 7)] if cut % 3 == 0 else data
    with contextlib.suppress(wire.WireError):
        decode(bytes(data), spec=SPEC | {2: 4096, 5: 2048})


@given(st.binary(max_size=300))
@settings(max_examples=2000, deadline=None)
def test_fuzz_random_compact_bytes_only_ever_raise_wire_errors(tail: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        decode(bytes([wire.MSG_UPDATE_COMPACT]) + tail)
