"""The wire codec: golden vectors, round trips of every message and coding, hostile input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.wire import CodedValues, IndexCoding, TensorUpdate, ValueCoding, index_coding
from tests.vectors.generate import build
from tests.wire_json import to_json

VECTORS = json.loads((Path(__file__).parent / "vectors" / "wire.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_golden_vector_decodes_to_its_meaning_and_reencodes_byte_exact(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    message = wire.decode(data)
    assert to_json(message) == vector["decoded"]
    assert wire.encode(message) == data


@pytest.mark.parametrize("vector", VECTORS["refused"], ids=lambda v: v["name"])
def test_golden_refusal_names_its_field(vector: dict) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode(bytes.fromhex(vector["hex"]))
    assert type(info.value).__name__ == vector["error"]
    assert info.value.field.startswith(vector["field"])


def test_committed_vectors_match_the_codec() -> None:
    assert build() == VECTORS, "wire format changed: run python -m tests.vectors.generate and review the diff"


# -- index coding -------------------------------------------------------------------------------------------
@st.composite
def positions(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    numel = draw(st.integers(1, 3000))
    density = draw(st.sampled_from([0.0005, 0.01, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    count = draw(st.integers(0, max(0, min(numel, int(numel * density) + 1))))
    return np.sort(rng.choice(numel, count, replace=False)).astype(np.int64), numel


@given(positions(), st.sampled_from([IndexCoding.BITMAP, IndexCoding.DELTA_VARINT, IndexCoding.GOLOMB_RICE]))
@settings(max_examples=300, deadline=None)
def test_every_index_coding_round_trips(case: tuple[np.ndarray, int], coding: IndexCoding) -> None:
    idx, numel = case
    k = index_coding.best_rice_k(index_coding.gaps(idx))
    payload = index_coding.encode(idx, numel, coding, k)
    back = index_coding.decode(payload, coding, idx.size, numel, k, "t")
    np.testing.assert_array_equal(back, idx)


@given(positions())
@settings(max_examples=200, deadline=None)
def test_the_chosen_index_coding_is_the_smallest(case: tuple[np.ndarray, int]) -> None:
    idx, numel = case
    chosen, k = index_coding.choose(idx, numel, value_bits=8)
    size = {c: len(index_coding.encode(idx, numel, c, k)) for c in IndexCoding if c != IndexCoding.DENSE}
    size[IndexCoding.DENSE] = numel - idx.size
    size[IndexCoding.GOLOMB_RICE] += 1
    assert size[chosen] <= min(size.values())


# -- messages -------------------------------------------------------------------------------------------------
def _codes(coding: ValueCoding, n: int, rng: np.random.Generator) -> np.ndarray:
    if coding == ValueCoding.INT8:
        return rng.integers(-127, 128, n).astype(np.int8)
    if coding == ValueCoding.TERNARY:
        return rng.integers(-1, 2, n).astype(np.int8)
    if coding == ValueCoding.FLOAT16:
        return rng.normal(size=n).astype(np.float16)
    return rng.normal(size=n).astype(np.float32)


@st.composite
def updates(draw: st.DrawFn) -> wire.Update:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = []
    for t in range(draw(st.integers(0, 4))):
        idx, numel = draw(positions())
        coding = draw(st.sampled_from([c for c in ValueCoding if c != ValueCoding.INT8_RICE]))
        scale = float(np.float32(draw(st.floats(1e-6, 10.0))))
        tensors.append(TensorUpdate(t, numel, idx, CodedValues(coding, _codes(coding, idx.size, rng), scale)))
    metrics = draw(st.dictionaries(st.text(max_size=8), st.floats(-1e6, 1e6, width=32), max_size=3))
    return wire.Update(
        os.urandom(16),
        draw(st.text(max_size=20)),
        draw(st.integers(0, 2**32)),
        hashlib.sha256(b"x").digest(),
        draw(st.integers(0, 10**6)),
        tensors,
        metrics,
    )


@given(updates())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_update_round_trip_is_exact(update: wire.Update) -> None:
    data = wire.encode(update)
    back = wire.decode(data, spec={t.tensor: t.numel for t in update.tensors}, expect=wire.Update)
    assert wire.encode(back) == data
    for a, b in zip(update.tensors, back.tensors, strict=True):
        np.testing.assert_array_equal(a.dense(), b.dense())


TASKS = st.builds(
    wire.Task,
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**32),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 1000),
    st.floats(0, 1, width=32),
    st.floats(0.125, 1, width=32),
    st.integers(0, 2**40),
    st.integers(1, 1024),
    st.floats(0, 10, width=32),
    st.booleans(),
    st.integers(0, 3),
    st.booleans(),
)

MESSAGE_STRATEGIES = {
    "task": TASKS,
    "presence": st.builds(
        wire.Presence,
        st.text(max_size=30),
        st.booleans(),
        st.integers(0, 2**62),
        st.integers(0, 2**40),
        st.none()
        | st.builds(
            wire.Capabilities,
            st.integers(0, 2**40),
            st.text(max_size=20),
            st.integers(0, 99),
            st.integers(0, 10**9),
            st.none() | st.binary(min_size=32, max_size=32),
            st.text(max_size=20),
            st.integers(0, 2**32),
        ),
    ),
    "gateway_state": st.builds(
        wire.GatewayState,
        st.text(max_size=20),
        st.integers(0, 2**32),
        st.integers(0, 3),
        st.binary(min_size=32, max_size=32),
        st.integers(0, 2**32),
        st.integers(0, 2**32),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
    ),
    "log": st.builds(wire.Log, st.integers(0, 7), st.text(max_size=200)),
    "model_data": st.builds(wire.ModelData, st.integers(0, 2**31), st.binary(max_size=2000)),
    "error": st.builds(wire.Error, st.sampled_from(list(wire.ErrorCode)), st.integers(0, 255), st.text(max_size=50)),
    "hello": st.builds(
        wire.Hello,
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
        st.text(max_size=30),
        st.integers(0, 255),
        st.integers(0, 2**20),
        st.none() | st.binary(min_size=32, max_size=32),
        st.lists(st.integers(0, 1024), max_size=40),
    ),
    "model_begin": st.integers(0, 2**31).flatmap(
        lambda size: st.builds(
            wire.ModelBegin, st.binary(min_size=32, max_size=32), st.just(size), st.integers(0, size)
        )
    ),
    "model_commit": st.builds(wire.ModelCommit, st.binary(min_size=32, max_size=32)),
    "infer": st.builds(wire.Infer, st.lists(st.integers(-128, 127), max_size=600).map(lambda v: np.array(v, np.int8))),
    "infer_result": st.builds(
        wire.InferResult,
        st.lists(st.integers(-128, 127), max_size=50).map(lambda v: np.array(v, np.int8)),
        st.integers(0, 2**40),
    ),
    "status": st.builds(
        wire.Status,
        st.integers(0, 255),
        st.none() | st.binary(min_size=32, max_size=32),
        st.integers(0, 2**40),
        st.integers(0, 255),
        st.integers(0, 2**40),
    ),
    "reset": st.builds(wire.Reset, st.integers(0, 255)),
    "receipt": st.builds(
        wire.Receipt,
        st.lists(st.binary(min_size=16, max_size=16), max_size=20),
        st.dictionaries(st.binary(min_size=16, max_size=16), st.text(max_size=40), max_size=5),
    ),
    "train": st.builds(wire.Train, TASKS),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_STRATEGIES))
def test_message_round_trips(name: str) -> None:
    @given(MESSAGE_STRATEGIES[name])
    @settings(max_examples=100, deadline=None)
    def check(message: object) -> None:
        data = wire.encode(message)
        back = wire.decode(data, expect=type(message))
        assert wire.encode(back) == data

    check()


def test_chunk_and_manifest_round_trip_and_check_themselves() -> None:
    data = b"x" * 1000
    chunk = wire.ModelChunk(bytes(32), 2, data, hashlib.sha256(data).digest())
    assert wire.decode(wire.encode(chunk)).data == data
    bad = wire.ModelChunk(bytes(32), 2, data[:-1] + b"y", chunk.digest)
    with pytest.raises(wire.ValueRejected, match=r"modelchunk\.data.*sha256"):
        wire.decode(wire.encode(bad))
    manifest = wire.ModelManifest(bytes(32), 1000, 300, 4, [wire.TrainableTensor(1, (10, 5))])
    assert wire.decode(wire.encode(manifest)).spec() == {1: 50}
    wrong = wire.ModelManifest(bytes(32), 1000, 300, 5, [])
    with pytest.raises(wire.ValueRejected, match="chunk_count"):
        wire.decode(wire.encode(wrong))


# -- hostile input -----------------------------------------------------------------------------------------------
def _update(coding: ValueCoding, codes: np.ndarray, idx: list[int], numel: int = 100) -> bytes:
    t = TensorUpdate(0, numel, np.array(idx, np.int64), CodedValues(coding, codes, 0.5))
    return wire.encode(wire.Update(bytes(16), "d", 1, bytes(32), 1, [t]))


def test_non_finite_values_are_refused() -> None:
    for bad in (np.nan, np.inf):
        data = _update(ValueCoding.FLOAT32, np.array([1.0, bad], np.float32), [3, 9])
        with pytest.raises(wire.ValueRejected, match=r"tensors\[0\]\.values.*non-finite"):
            wire.decode(data)


def test_shapes_are_checked_against_the_model() -> None:
    data = _update(ValueCoding.INT8, np.array([1], np.int8), [3])
    with pytest.raises(wire.ValueRejected, match=r"tensors\[0\]\.numel"):
        wire.decode(data, spec={0: 99})
    with pytest.raises(wire.ValueRejected, match="not trainable"):
        wire.decode(data, spec={5: 100})


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def test_declared_counts_that_disagree_with_the_payload_are_refused() -> None:
    data = _update(ValueCoding.INT8, np.array([1, 2], np.int8), [3, 9])
    # key 5 (nnz) = 2 -> 3: the varint payload holds two positions.
    with pytest.raises(wire.ValueRejected, match="positions"):
        wire.decode(_patched(data, b"\x05\x02", b"\x05\x03"))
    # numel 100 -> 5: position 9 is outside.
    with pytest.raises(wire.ValueRejected, match="outside"):
        wire.decode(_patched(data, b"\x01\x18\x64", b"\x01\x05"))


def test_int8_code_minus_128_and_ternary_code_3_are_refused() -> None:
    data = _update(ValueCoding.INT8, np.array([-127], np.int8), [1])
    with pytest.raises(wire.ValueRejected, match="-128"):
        wire.decode(_patched(data, b"\xd8\x48\x41\x81", b"\xd8\x48\x41\x80"))
    with pytest.raises(ValueError, match=r"-127\.\.127"):
        CodedValues(ValueCoding.INT8, np.array([-128], np.int8))
    with pytest.raises(TypeError, match="integer"):
        CodedValues(ValueCoding.INT8, np.array([0.5], np.float32))
    data = _update(ValueCoding.TERNARY, np.array([1], np.int8), [1])
    with pytest.raises(wire.ValueRejected, match="0b11"):
        wire.decode(_patched(data, b"\xd8\x40\x41\x01", b"\xd8\x40\x41\x03"))


def test_size_depth_and_item_limits() -> None:
    small = wire.Limits(max_message_bytes=64)
    with pytest.raises(wire.MessageTooLarge):
        wire.decode(b"\x40" * 65, small)
    deep = b"\x81" * 20 + b"\x00"
    with pytest.raises(wire.LimitExceeded, match="nesting"):
        wire.decode(deep)
    many = b"\x99\xff\xff" + b"\x00" * 0xFFFF
    with pytest.raises(wire.LimitExceeded, match="items"):
        wire.decode(many, wire.Limits(max_items=1000))


def test_wrong_message_type_and_non_map_are_refused() -> None:
    task = wire.encode(wire.Task(bytes(16), 1, bytes(32), 1, 0.1, 0.1, 10))
    with pytest.raises(wire.SchemaError, match="Task where Update was expected"):
        wire.decode(task, expect=wire.Update)
    with pytest.raises(wire.SchemaError, match="expected a map"):
        wire.decode(b"\x83\x01\x02\x03")
    with pytest.raises(wire.SchemaError, match="expected bytes"):
        wire.decode("text")  # type: ignore[arg-type]


def test_nested_length_amplification_is_refused_before_allocation() -> None:
    # Each array header claims every byte after it; only a full scan can tell the data is not there.
    blob = bytearray()
    size = 40_000
    while len(blob) + 5 <= size:
        blob += b"\x9a" + (size - len(blob) - 5).to_bytes(4, "big")
    with pytest.raises(wire.WireError):
        wire.decode(bytes(blob))


VALID_BYTES = [bytes.fromhex(v["hex"]) for v in VECTORS["valid"]]


@given(
    st.sampled_from(VALID_BYTES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 10_000),
)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_messages_only_ever_raise_wire_errors(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, len(data) - cut % 4)] if cut % 3 == 0 else data
    with contextlib.suppress(wire.WireError):
        wire.decode(bytes(data), spec={7: 1000})


@given(st.binary(max_size=300))
@settings(max_examples=2000, deadline=None)
def test_fuzz_random_bytes_only_ever_raise_wire_errors(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode(data)
