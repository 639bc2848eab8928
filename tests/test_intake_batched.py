"""The gateway's batched update decoder against the tensor-by-tensor one: same result, or the same refusal.

``Update.from_reader(..., fast=True)`` (what ``wire.decode`` does given a spec) decodes every tensor's
streams at once and falls back to the careful decoder for anything it does not take. These tests hold it
to that: on valid updates of every layout devices send, on updates whose bytes were mutated, and on the
batched stream decoders directly against the per-stream ones with hostile payloads. Both paths are real
decodes of real CBOR bytes; a refusal must name the same field with the same words. The whole-update tests
run twice: with the streams decoded by the C path (``_cwire.c``, when built) and by numpy (tests/test_cwire.py
holds the C path to the per-stream decoders directly).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.wire import CodedValues, TensorUpdate, ValueCoding, accel, index_coding
from edge_runtime.wire.cbor import loads
from edge_runtime.wire.limits import DEFAULT_LIMITS
from edge_runtime.wire.schema import MapReader
from edge_runtime.wire.update import Update, _read_tensors_batched, layout_for
from edge_runtime.wire.values import apply_signs_many, pack_int8_rice, unpack_int8_rice


@pytest.fixture(scope="module", params=["c", "numpy"])
def stream_decoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which decoder the batched path uses for the streams: the C path (skipped where it is not built, failed
    where CI requires it) or numpy."""
    if request.param == "numpy":
        with accel.python_only():
            yield "numpy"
        return
    if accel.built is None:
        if os.environ.get("TINYFED_REQUIRE_C_EXTENSION") == "1":
            pytest.fail("TINYFED_REQUIRE_C_EXTENSION=1 but edge_runtime.wire._cwire is not built")
        pytest.skip("the C path is not built here (setup.py)")
    assert accel.native is accel.built
    yield "c"


def _decode(data: bytes, spec: dict[int, int] | None, fast: bool) -> Update | str:
    """The decoded update, or the refusal as 'Type: field: words'."""
    try:
        obj = loads(data, DEFAULT_LIMITS)
        r = MapReader(obj, "update")
        return Update.from_reader(r, DEFAULT_LIMITS, spec, fast=fast)
    except wire.WireError as exc:
        return f"{type(exc).__name__}: {exc.field}: {exc}"


def _same(a: Update | str, b: Update | str) -> None:
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert wire.encode(a) == wire.encode(b)
    assert len(a.tensors) == len(b.tensors)
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert (x.tensor, x.numel, x.values.coding, x.values.scale) == (
            y.tensor,
            y.numel,
            y.values.coding,
            y.values.scale,
        )
        assert x.indices.dtype == y.indices.dtype and x.values.codes.dtype == y.values.codes.dtype
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.values.codes, y.values.codes)
    for (pa, va), (pb, vb) in zip([a.entries()], [b.entries()], strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(va, vb)  # bit for bit: the batched scaling is the per-tensor one


@st.composite
def device_updates(draw: st.DrawFn) -> tuple[Update, dict[int, int]]:
    """Updates as devices send them (int8 or ternary values, any density), over a random model."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(0, 6))
    spec = {int(t): int(draw(st.integers(1, 5000))) for t in rng.choice(40, count, replace=False)}
    tensors = []
    for tensor, numel in spec.items():
        density = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3, 1.0]))
        n = min(numel, int(rng.binomial(numel, density)) + draw(st.integers(0, 2)))
        idx = np.sort(rng.choice(numel, n, replace=False)).astype(np.int64)
        kind = draw(st.sampled_from(["int8", "small", "narrow", "ternary"]))
        if kind == "ternary":
            values = CodedValues(ValueCoding.TERNARY, rng.integers(-1, 2, n).astype(np.int8), 0.5)
        else:
            top = {"int8": 127, "small": 3, "narrow": 1}[kind]
            codes = rng.integers(-top, top + 1, n).astype(np.int8)
            values = CodedValues(ValueCoding.INT8, codes, float(np.float32(draw(st.floats(0.0, 2.0)))))
        tensors.append(TensorUpdate(tensor, numel, idx, values))
    update = Update(os.urandom(16), "d", 1, hashlib.sha256(b"m").digest(), 10, tensors)
    return update, spec


@pytest.mark.usefixtures("stream_decoder")
@given(device_updates())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batched_decode_equals_the_careful_decode(case: tuple[Update, dict[int, int]]) -> None:
    update, spec = case
    data = wire.encode(update)
    fast, careful = _decode(data, spec, True), _decode(data, spec, False)
    assert not isinstance(careful, str), careful
    _same(fast, careful)


def _mutations() -> st.SearchStrategy[tuple[int, list[tuple[int, int]], int]]:
    return st.tuples(
        st.integers(0, 2**32 - 1),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
        st.integers(0, 10_000),
    )


@pytest.mark.usefixtures("stream_decoder")
@given(device_updates(), _mutations())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_updates_decode_or_refuse_as_the_careful_decoder_does(
    case: tuple[Update, dict[int, int]], mutation: tuple[int, list[tuple[int, int]], int]
) -> None:
    update, spec = case
    data = bytearray(wire.encode(update))
    _, flips, cut = mutation
    for at, byte in flips:
        if data:
            data[at % len(data)] = byte
    if cut % 7 == 0 and data:
        del data[cut % len(data) :]
    _same(_decode(bytes(data), spec, True), _decode(bytes(data), spec, False))
    _same(_decode(bytes(data), None, True), _decode(bytes(data), None, False))  # no model to check against


def _field_edits() -> st.SearchStrategy[tuple[int, int, object]]:
    """(tensor slot, key, new value): one field of one tensor map replaced, keeping the CBOR well-formed."""
    values = st.one_of(
        st.integers(-2, 2**33),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=True),
        st.binary(max_size=40),
        st.text(max_size=4),
    )
    return st.tuples(st.integers(0, 5), st.integers(0, 11), values)


@pytest.mark.usefixtures("stream_decoder")
@given(device_updates(), _field_edits())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_edited_fields_are_refused_with_the_careful_decoders_words(
    case: tuple[Update, dict[int, int]], edit: tuple[int, int, object]
) -> None:
    update, spec = case
    obj = cbor2.loads(wire.encode(update))
    slot, key, value = edit
    if obj[7]:
        obj[7][slot % len(obj[7])][key] = value
    data = cbor2.dumps(obj, canonical=True)
    _same(_decode(data, spec, True), _decode(data, spec, False))


@pytest.mark.usefixtures("stream_decoder")
def test_batched_decoder_takes_the_layouts_devices_send() -> None:
    """Not a silent fallback every time: the common layouts are decoded by the batched path itself."""
    rng = np.random.default_rng(1)
    spec = {0: 65536, 1: 256, 2: 32768, 3: 128}
    tensors = []
    for tensor, numel in spec.items():
        idx = np.sort(rng.choice(numel, max(1, numel // 100), replace=False)).astype(np.int64)
        tensors.append(
            TensorUpdate(
                tensor, numel, idx, CodedValues(ValueCoding.INT8, rng.integers(-9, 10, idx.size).astype(np.int8), 0.01)
            )
        )
    obj = cbor2.loads(wire.encode(Update(os.urandom(16), "d", 1, bytes(32), 5, tensors)))
    codings = {(t[2], t[6]) for t in obj[7]}
    assert (3, 4) in codings and (2, 2) in codings  # Rice positions with Rice values; varint with raw int8
    batched = _read_tensors_batched(obj[7], DEFAULT_LIMITS, spec)
    assert batched is not None
    layout = layout_for(spec)
    update = wire.decode(wire.encode(Update(os.urandom(16), "d", 1, bytes(32), 5, tensors)), spec=spec)
    flat, values = update.flat(layout)
    dense = np.zeros(layout.total, np.float32)
    dense[flat] = values
    for t in tensors:
        start = layout.offset[t.tensor]
        np.testing.assert_array_equal(dense[start : start + t.numel], t.dense())


# -- the stream decoders themselves ------------------------------------------------------------------------------
def _careful_rice(payload: bytes, n: int, k: int) -> np.ndarray | None:
    try:
        return index_coding.decode_rice(payload, n, k, "f")
    except wire.WireError:
        return None


@given(st.lists(st.tuples(st.binary(max_size=12), st.integers(0, 20), st.integers(0, 9)), min_size=1, max_size=5))
@settings(max_examples=800, deadline=None)
def test_rice_many_accepts_exactly_what_the_per_stream_decoder_accepts(streams: list[tuple[bytes, int, int]]) -> None:
    payloads, counts, ks = (list(x) for x in zip(*streams, strict=True))
    careful = [_careful_rice(p, n, k) for p, n, k in streams]
    many = index_coding.decode_rice_many(payloads, counts, ks)
    if any(c is None for c in careful):
        assert many is None
    else:
        assert many is not None
        np.testing.assert_array_equal(many, np.concatenate([c for c in careful if c is not None]))


@given(st.lists(st.tuples(st.lists(st.integers(0, 2**20), max_size=30), st.integers(0, 12)), min_size=1, max_size=5))
@settings(max_examples=500, deadline=None)
def test_rice_many_decodes_what_encode_rice_wrote(streams: list[tuple[list[int], int]]) -> None:
    gaps = [np.array(g, np.int64) for g, _ in streams]
    payloads = [index_coding.encode_rice(g, k) for g, (_, k) in zip(gaps, streams, strict=True)]
    many = index_coding.decode_rice_many(payloads, [g.size for g in gaps], [k for _, k in streams])
    assert many is not None
    np.testing.assert_array_equal(many, np.concatenate(gaps))


@given(st.lists(st.tuples(st.binary(max_size=12), st.integers(0, 8)), min_size=1, max_size=5))
@settings(max_examples=800, deadline=None)
def test_varint_many_accepts_exactly_what_the_per_stream_decoder_accepts(streams: list[tuple[bytes, int]]) -> None:
    careful = []
    for p, n in streams:
        try:
            careful.append(index_coding.decode_varint(p, n, "f"))
        except wire.WireError:
            careful.append(None)
    many = index_coding.decode_varint_many([p for p, _ in streams], [n for _, n in streams])
    if any(c is None for c in careful):
        assert many is None
    else:
        assert many is not None
        np.testing.assert_array_equal(many, np.concatenate([c for c in careful if c is not None]))


@given(
    st.lists(st.tuples(st.lists(st.integers(-127, 127), max_size=20), st.binary(max_size=4)), min_size=1, max_size=4)
)
@settings(max_examples=300, deadline=None)
def test_signs_many_accepts_exactly_what_unpack_int8_rice_accepts(tensors: list[tuple[list[int], bytes]]) -> None:
    """Valid INT8_RICE payloads with their sign bytes sometimes replaced: same codes or both refuse."""
    payloads, counts, signs, mags, careful = [], [], [], [], []
    for codes_list, noise in tensors:
        codes = np.array(codes_list, np.int8)
        base = int(np.abs(codes.astype(np.int64)).min()) if codes.size else 0
        payload = pack_int8_rice(codes, 2, base)
        sign_bytes = -(-codes.size // 8)
        if noise and sign_bytes:
            payload = noise[:1] + payload[1:]
        payloads.append(payload)
        counts.append(codes.size)
        signs.append(payload[:sign_bytes])
        rice = index_coding.decode_rice(payload[sign_bytes:], codes.size, 2, "f")
        mags.append(rice + base)
        try:
            careful.append(unpack_int8_rice(payload, codes.size, 2, base, "f"))
        except wire.WireError:
            careful.append(None)
    many = apply_signs_many(signs, counts, np.concatenate(mags))
    if any(c is None for c in careful):
        assert many is None
    else:
        assert many is not None
        np.testing.assert_array_equal(many, np.concatenate([c for c in careful if c is not None]))


@pytest.mark.usefixtures("stream_decoder")
def test_positions_outside_a_tensor_fall_back_and_are_refused_by_name() -> None:
    idx = np.array([5, 90], np.int64)
    update = Update(
        os.urandom(16),
        "d",
        1,
        bytes(32),
        5,
        [TensorUpdate(0, 100, idx, CodedValues(ValueCoding.INT8, np.array([1, 2], np.int8), 1.0))],
    )
    data = wire.encode(update)
    with pytest.raises(wire.WireError) as info:
        wire.decode(data, spec={0: 60})  # the device's model had 100 elements; this gateway's has 60
    assert info.value.field == "update.tensors[0].numel"
    obj = cbor2.loads(data)
    obj[7][0][1] = 60
    with pytest.raises(wire.WireError) as info:
        wire.decode(cbor2.dumps(obj, canonical=True), spec={0: 60})
    assert info.value.field == "update.tensors[0].positions"
