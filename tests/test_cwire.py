"""The intake's C path (edge_runtime/wire/_cwire.c) held to the Python decoders it stands in for.

It must be sound (whatever it takes, the Python code takes, with the same result) and, on what devices send,
complete (or the gateway pays for the Python code after the C path anyway). Real CBOR bytes throughout:
messages as the wire module encodes them, the same bytes mutated, arbitrary bytes, and streams encoded by the
device's own encoders. Where CI requires the extension (``TINYFED_REQUIRE_C_EXTENSION=1``, scripts/test.sh)
a missing build fails here rather than skipping.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.wire import CodedValues, TensorUpdate, ValueCoding, accel, index_coding
from edge_runtime.wire.index_coding import IndexCoding
from edge_runtime.wire.limits import DEFAULT_LIMITS, Limits
from edge_runtime.wire.scan import ALLOWED_TAGS, scan
from edge_runtime.wire.values import pack_int8_rice, plan_int8_rice, unpack_int8_rice

REQUIRED = os.environ.get("TINYFED_REQUIRE_C_EXTENSION") == "1"
native: Any = accel.built
pytestmark = pytest.mark.skipif(native is None and not REQUIRED, reason="the C path is not built here (setup.py)")


def test_the_extension_is_built_and_used() -> None:
    assert native is not None, "TINYFED_REQUIRE_C_EXTENSION=1 but edge_runtime.wire._cwire did not build"
    assert accel.native is native  # the decoders use it unless TINYFED_PURE_PYTHON=1 or python_only()
    with accel.python_only():
        assert accel.native is None
    assert accel.native is native


# -- the scan ---------------------------------------------------------------------------------------------------
def _python_scan(data: bytes, limits: Limits) -> bool:
    with accel.python_only():
        try:
            scan(data, limits)
        except wire.WireError:
            return False
    return True


def _c_scan(data: bytes, limits: Limits) -> bool:
    return bool(native.scan_ok(data, limits.max_items, limits.max_depth))


def _update(rng: np.random.Generator) -> wire.Update:
    tensors = []
    for tensor, numel in ((0, 4096), (1, 64), (3, 640), (4, 10)):
        idx = np.sort(rng.choice(numel, max(1, numel // 50), replace=False)).astype(np.int64)
        codes = rng.integers(-127, 128, idx.size).astype(np.int8)
        tensors.append(TensorUpdate(tensor, numel, idx, CodedValues(ValueCoding.INT8, codes, 0.01)))
    return wire.Update(
        os.urandom(16), "dev-7", 3, hashlib.sha256(b"m").digest(), 40, tensors,
        metrics={"loss": 0.25, "accuracy": 0.9}, activation_ranges={2: (-1.5, 4.0), "dense/out": (0.0, 6.0)},
    )  # fmt: skip


def _corpus() -> list[bytes]:
    """Messages as the wire module writes them: updates plain and signed, and a gateway's own messages."""
    rng = np.random.default_rng(7)
    signer = wire.Ed25519Signer.generate()
    out = []
    for _ in range(4):
        data = wire.encode(_update(rng))
        out += [data, wire.sign(data, signer)]
    out.append(cbor2.dumps({0: 1, 1: "tëxt ✓", 2: [1.5, None, True, False], 3: cbor2.CBORTag(85, b"\0" * 8)}))
    return out


def test_the_c_scan_takes_real_messages() -> None:
    for data in _corpus():
        assert _python_scan(data, DEFAULT_LIMITS)
        assert _c_scan(data, DEFAULT_LIMITS)


_cbor_values = st.recursive(
    st.one_of(
        st.integers(-(2**64) + 1, 2**64 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=6),
        st.binary(max_size=6),
        st.booleans(),
        st.none(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.integers(-5, 5), st.text(max_size=3)), inner, max_size=3),
        st.builds(cbor2.CBORTag, st.sampled_from([18, 64, 72, 85, 2, 24, 55799]), inner),
    ),
    max_leaves=12,
)


@given(_cbor_values, st.integers(1, 40), st.integers(0, 9))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_c_scan_agrees_with_the_python_scan_on_any_cbor(value: Any, max_items: int, max_depth: int) -> None:
    """Tags tinyfed never writes, bignums, deep nesting and item counts over the limit: the same verdict."""
    data = cbor2.dumps(value)
    limits = Limits(max_items=max_items, max_depth=max_depth)
    assert _c_scan(data, limits) == _python_scan(data, limits)
    assert _c_scan(data, DEFAULT_LIMITS) == _python_scan(data, DEFAULT_LIMITS)


@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.integers(0, 10_000), st.sampled_from(["flip", "cut", "insert", "append"]))
@settings(max_examples=800, deadline=None)
def test_the_c_scan_agrees_on_mutated_messages(seed: int, flips: list[tuple[int, int]], at: int, how: str) -> None:
    corpus = _CORPUS
    data = bytearray(corpus[seed % len(corpus)])
    for pos, byte in flips:
        data[pos % len(data)] = byte
    if how == "cut":
        del data[at % len(data) :]
    elif how == "insert":
        data[at % len(data) : at % len(data)] = bytes([flips[0][1] if flips else 0xFF])
    elif how == "append":
        data += b"\x00"
    assert _c_scan(bytes(data), DEFAULT_LIMITS) == _python_scan(bytes(data), DEFAULT_LIMITS)


@given(st.binary(max_size=64))
@settings(max_examples=1500, deadline=None)
def test_the_c_scan_agrees_on_arbitrary_bytes(data: bytes) -> None:
    assert _c_scan(data, DEFAULT_LIMITS) == _python_scan(data, DEFAULT_LIMITS)


def test_the_c_scan_refuses_invalid_text_and_hands_it_back() -> None:
    """Overlong, surrogate and truncated UTF-8: refused by the C path, named by the Python scan."""
    for text in (b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"):
        data = bytes([0x60 | len(text)]) + text
        assert not _c_scan(data, DEFAULT_LIMITS)
        with pytest.raises(wire.MalformedCBOR, match="not UTF-8"):
            scan(data, DEFAULT_LIMITS)


@pytest.mark.parametrize("tag", sorted(set(range(300)) | ALLOWED_TAGS | {55799, 2**16, 2**32, 2**63}))
def test_the_c_scan_takes_exactly_the_tags_the_python_scan_takes(tag: int) -> None:
    """The C code's list of tags is its own copy of scan.ALLOWED_TAGS: every tag, through both."""
    for data in (cbor2.dumps(cbor2.CBORTag(tag, b"")), cbor2.dumps([1, {2: cbor2.CBORTag(tag, 0)}])):
        assert _c_scan(data, DEFAULT_LIMITS) == _python_scan(data, DEFAULT_LIMITS) == (tag in ALLOWED_TAGS)


def test_limits_beyond_what_the_c_scan_keeps_go_to_the_python_scan() -> None:
    deep = b"\x81" * 80 + b"\x00"
    assert not native.scan_ok(deep, 1000, 100)  # over its 64 frames: it declines, it does not guess
    assert _python_scan(deep, Limits(max_depth=100))
    assert not native.scan_ok(b"\x00", 10, -1) and not native.scan_ok(b"\x00", -1, 8)


# -- the tensor streams -----------------------------------------------------------------------------------------
Head = tuple[int, int, int, int, bytes, int, bytes, int, int, float]


def _careful(head: Head) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The per-stream Python decoders' answer for one tensor (None: refused)."""
    numel, nnz, coding, k, positions, value_coding, values, vk, base, scale = head
    try:
        idx = index_coding.decode(positions, coding, nnz, numel, k, "f")
        if value_coding == ValueCoding.INT8_RICE:
            codes = unpack_int8_rice(values, nnz, vk, base, "f")
        elif value_coding == ValueCoding.INT8 and len(values) == nnz:
            codes = np.frombuffer(values, np.int8)
        else:
            return None
        coded = CodedValues(ValueCoding.INT8, codes, scale)
    except (wire.WireError, ValueError):
        return None
    return idx, coded.codes, coded.decode()


def _c(heads: list[Head], max_total: int = DEFAULT_LIMITS.max_nnz) -> tuple[np.ndarray, ...] | None:
    out = native.decode_tensors(heads, max_total)
    if out is None:
        return None
    return np.frombuffer(out[0], np.int64), np.frombuffer(out[1], np.int8), np.frombuffer(out[2], np.float32)


def _assert_same(got: tuple[np.ndarray, ...], want: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    for part, name in enumerate(("positions", "codes", "values")):
        expected = np.concatenate([w[part] for w in want]) if want else got[part][:0]
        assert got[part].dtype == expected.dtype or expected.size == 0, name
        np.testing.assert_array_equal(got[part], expected.astype(got[part].dtype), err_msg=name)


_heads = st.tuples(
    st.integers(0, 300),  # numel
    st.integers(0, 40),  # nnz
    st.sampled_from([2, 3, 3, 1]),  # index coding (bitmap: never the C path's)
    st.integers(0, 12),  # k
    st.binary(max_size=24),  # positions
    st.sampled_from([2, 4, 4, 3]),  # value coding (ternary: never the C path's)
    st.binary(max_size=24),  # values
    st.integers(0, 12),  # value k
    st.integers(0, 140),  # base
    st.sampled_from([0.0, 0.01, 1 / 3, 3.0e38, 1e-40]),
)


@given(st.lists(_heads, max_size=4))
@settings(max_examples=3000, deadline=None)
def test_c_streams_take_only_what_the_per_stream_decoders_take(heads: list[Head]) -> None:
    """Arbitrary payloads: whatever the C path decodes, the Python decoders decode to the same positions, codes
    and float32 values (bit for bit); whatever they all take (the layouts the C path knows), it takes too."""
    heads = [(min(nnz, numel) and numel, min(nnz, numel), *rest) for numel, nnz, *rest in heads]  # type: ignore[misc]
    careful = [_careful(h) for h in heads]
    got = _c(heads)
    if got is not None:
        assert all(c is not None for c in careful)
        _assert_same(got, [c for c in careful if c is not None])
    elif all(c is not None for c in careful):
        assert any(h[2] not in (2, 3) or h[5] not in (2, 4) or h[8] > 127 for h in heads)


@given(st.lists(st.tuples(st.integers(1, 5000), st.floats(0.0, 1.0), st.integers(1, 127), st.booleans()), max_size=5),
       st.integers(0, 2**32 - 1))
@settings(max_examples=400, deadline=None)
def test_c_streams_decode_what_devices_encode(tensors: list[tuple[int, float, int, bool]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    heads: list[Head] = []
    want = []
    for numel, density, top, rice_values in tensors:
        idx = np.sort(rng.choice(numel, int(numel * density), replace=False)).astype(np.int64)
        codes = rng.integers(-top, top + 1, idx.size).astype(np.int8)
        coding, k = index_coding.choose(idx, numel, 8)
        if coding not in (IndexCoding.GOLOMB_RICE, IndexCoding.DELTA_VARINT):
            coding = IndexCoding.GOLOMB_RICE if idx.size else IndexCoding.DELTA_VARINT
            k = index_coding.best_rice_k(index_coding.gaps(idx))
        positions = index_coding.encode(idx, numel, coding, k)
        if rice_values:
            _, vk, base = plan_int8_rice(codes)
            packed = pack_int8_rice(codes, vk, base)
            heads.append((numel, idx.size, int(coding), k, positions, 4, packed, vk, base, 0.07))
        else:
            heads.append((numel, idx.size, int(coding), k, positions, 2, codes.tobytes(), 0, 0, 0.07))
        want.append((idx, codes, codes.astype(np.float32) * np.float32(0.07)))
    got = _c(heads)
    assert got is not None
    _assert_same(got, want)


def _device_head(rng: np.random.Generator, numel: int, nnz: int, rice_values: bool) -> Head:
    idx = np.sort(rng.choice(numel, nnz, replace=False)).astype(np.int64)
    codes = rng.integers(-127, 128, nnz).astype(np.int8)
    k = index_coding.best_rice_k(index_coding.gaps(idx))
    positions = index_coding.encode(idx, numel, IndexCoding.GOLOMB_RICE, k)
    if rice_values:
        _, vk, base = plan_int8_rice(codes)
        return (numel, nnz, 3, k, positions, 4, pack_int8_rice(codes, vk, base), vk, base, 0.5)
    return (numel, nnz, 3, k, positions, 2, codes.tobytes(), 0, 0, 0.5)


@given(st.integers(0, 2**32 - 1), st.integers(1, 200), st.booleans(), st.sampled_from(["positions", "values"]),
       st.integers(0, 2**20), st.integers(-3, 3))
@settings(max_examples=1500, deadline=None)
def test_c_streams_agree_on_one_bit_flipped_or_a_shifted_base(
    seed: int, numel: int, rice_values: bool, where: str, bit: int, base_shift: int
) -> None:
    """Near misses of what devices send: a padding bit set, a code cut short, a magnitude pushed past 127."""
    rng = np.random.default_rng(seed)
    head = list(_device_head(rng, numel, int(rng.integers(0, numel + 1)), rice_values))
    slot = 4 if where == "positions" else 6
    payload = bytearray(head[slot])
    if payload:
        payload[(bit >> 3) % len(payload)] ^= 1 << (bit & 7)
    head[slot] = bytes(payload)
    head[8] = min(127, max(0, head[8] + base_shift)) if rice_values else 0
    careful = _careful(tuple(head))  # type: ignore[arg-type]
    got = _c([tuple(head)])  # type: ignore[list-item]
    assert (got is None) == (careful is None)
    if got is not None and careful is not None:
        _assert_same(got, [careful])


def test_counts_the_bytes_cannot_carry_are_refused_before_anything_is_allocated() -> None:
    huge = 2**40
    assert _c([(2 * huge, huge, 3, 0, b"\x00" * 10, 4, b"\x00" * 10, 0, 0, 1.0)]) is None
    assert _c([(2 * huge, huge, 2, 0, b"\x00" * 10, 2, b"\x00" * 10, 0, 0, 1.0)]) is None
    assert _c([(100, 8, 2, 0, bytes(8), 2, bytes(8), 0, 0, 1.0)], max_total=7) is None  # over the update's limit
    assert _c([(100, 8, 2, 0, bytes(8), 2, bytes(8), 0, 0, 1.0)], max_total=8) is not None


@pytest.mark.parametrize(
    "head",
    [
        [1, 2, 3],
        (100, 1, 3, 0, "text", 2, b"\x01", 0, 0, 1.0),
        (100, 1, 3, 0, bytearray(b"\x00"), 2, b"\x01", 0, 0, 1.0),
        (100, 1, 3, 0, b"\x00", 2, b"\x01", 0, 0, "1.0"),
        (100, 1, 3, 2**70, b"\x00", 2, b"\x01", 0, 0, 1.0),
        (100, 1, 3, 31, b"\x00" * 8, 2, b"\x01", 0, 0, 1.0),
        (100, -1, 3, 0, b"", 2, b"", 0, 0, 1.0),
        (100, 1, 3, 0, b"\x00", 2, b"\x80", 0, 0, 1.0),  # the code -128
        (5, 1, 2, 0, b"\x05", 2, b"\x01", 0, 0, 1.0),  # position 5 of a 5-element tensor
        (100, 2, 2, 0, b"\x01\x02\x03", 2, b"\x01\x02", 0, 0, 1.0),  # a varint left over
        (2**40, 1, 2, 0, b"\xff\xff\xff\xff\xff\x01", 2, b"\x01", 0, 0, 1.0),  # a varint of six bytes
    ],
)
def test_malformed_heads_are_handed_back_never_raised(head: Any) -> None:
    assert native.decode_tensors([head], DEFAULT_LIMITS.max_nnz) is None
    with pytest.raises(TypeError):
        native.decode_tensors((head,), 10)  # not a list: a caller's bug, not input


_CORPUS = _corpus() if native is not None else []


# -- the compact update's bit stream ----------------------------------------------------------------------------
def _compact_cases() -> list[tuple[bytes, dict[int, int]]]:
    """Compact updates as devices write them: int8 and ternary values at every density (Rice, bitmap and
    dense positions; Rice, raw and ternary values), with and without extras."""
    from tests.test_compact import real_update

    out = []
    for density in (0.001, 0.01, 0.1, 0.6, 1.0):
        for coding in (ValueCoding.INT8, ValueCoding.TERNARY):
            update, spec = real_update(density, seed=int(density * 1000), value_coding=coding)
            out.append((wire.encode_compact(update, spec), spec))
    update, spec = real_update(0.05, seed=3)
    update.metrics, update.below_clip = {"loss": 0.5}, True
    out.append((wire.encode_compact(update, spec), spec))
    return out


def _compact_decode(data: bytes, spec: dict[int, int]) -> wire.Update | str:
    from tests.test_compact import BASE, DEVICE

    try:
        return wire.decode(data, spec=spec, device=DEVICE, versions=[BASE])
    except wire.WireError as exc:
        return f"{type(exc).__name__}: {exc.field}: {exc}"


def _same_compact(a: wire.Update | str, b: wire.Update | str) -> None:
    from tests.test_compact import same

    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        same(a, b)
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert x.indices.dtype == y.indices.dtype and x.values.codes.dtype == y.values.codes.dtype
        for mine, theirs in zip(a.entries(), b.entries(), strict=True):  # the C path's float32 values, bit for bit
            assert mine.dtype == theirs.dtype
            np.testing.assert_array_equal(mine, theirs)


def test_the_c_path_takes_every_compact_layout_devices_write() -> None:
    from edge_runtime.wire.compact import FIXED_HEADER, _read_leb128

    for data, spec in _compact_cases():
        _, at = _read_leb128(data, FIXED_HEADER, "round", 2**32)
        _, at = _read_leb128(data, at, "samples", 2**32)
        order = sorted(spec)
        limits = DEFAULT_LIMITS
        assert native.decode_compact(data[at:], [spec[t] for t in order], limits.max_nnz, limits.max_tensors,
                                     limits.max_numel) is not None  # fmt: skip
        with accel.python_only():
            python = _compact_decode(data, spec)
        assert not isinstance(python, str), python
        _same_compact(_compact_decode(data, spec), python)


_COMPACT = _compact_cases() if native is not None else []


@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 7)), max_size=3),
       st.integers(0, 10_000), st.sampled_from(["flip", "cut", "append", "spec"]))
@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compact_updates_with_bits_flipped_decode_or_refuse_as_the_python_reader_does(
    seed: int, flips: list[tuple[int, int]], at: int, how: str
) -> None:
    data, spec = _COMPACT[seed % len(_COMPACT)]
    mutated = bytearray(data)
    for pos, bit in flips:
        mutated[pos % len(mutated)] ^= 1 << bit
    if how == "cut":
        del mutated[max(14, at % len(mutated)) :]
    elif how == "append":
        mutated += bytes([at & 0xFF])
    elif how == "spec":  # the gateway's model differs from the device's
        spec = {t: max(1, n + (at % 7) - 3) for t, n in spec.items()}
    with accel.python_only():
        python = _compact_decode(bytes(mutated), spec)
    _same_compact(_compact_decode(bytes(mutated), spec), python)


@given(st.binary(max_size=200), st.sampled_from([1, 5, 64, 4096]))
@settings(max_examples=2000, deadline=None)
def test_compact_bodies_of_arbitrary_bits_decode_or_refuse_as_the_python_reader_does(body: bytes, numel: int) -> None:
    data = bytes([10]) + bytes(8) + _COMPACT[0][0][9:13] + b"\x07\x10" + body
    spec = {0: numel, 4: 3, 9: numel}
    with accel.python_only():
        python = _compact_decode(data, spec)
    _same_compact(_compact_decode(data, spec), python)


# -- from the review of the C path ------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [63, 64, 121, 200, 1000])
def test_quotients_of_64_ones_and_more_from_a_byte_boundary_decode_as_python_does(gap: int) -> None:
    """A unary run reaching 64 ones read from a byte boundary: counting leading bits of zero is undefined in C,
    and once took the 64th one as the code's end, shifting every later position (a device chooses its Rice
    parameter, so a liar can send such runs)."""
    positions = index_coding.encode_rice(np.array([gap, 0, 3], np.int64), 0)
    codes = bytes([1, 2, 3])
    head: Head = (5000, 3, 3, 0, positions, 2, codes, 0, 0, 1.0)
    careful = _careful(head)
    assert careful is not None
    got = _c([head])
    assert got is not None
    _assert_same(got, [careful])
    magnitudes = index_coding.encode_rice(np.array([gap % 120, 0], np.int64), 0)
    rice_head: Head = (10, 2, 2, 0, b"\x00\x01", 4, b"\x00" + magnitudes, 0, 0, 1.0)
    careful = _careful(rice_head)
    got = _c([rice_head])
    assert (got is None) == (careful is None)
    if got is not None and careful is not None:
        _assert_same(got, [careful])


def test_a_compact_update_with_a_long_unary_run_decodes_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_runtime.wire import compact

    idx = np.array([0, 700, 701, 4000], np.int64)
    tensors = [TensorUpdate(2, 4096, idx, CodedValues(ValueCoding.INT8, np.array([5, -6, 7, 8], np.int8), 0.5))]
    monkeypatch.setattr(compact, "best_rice_k", lambda g: 0)  # what a lying device may choose: runs of 700 ones
    data = wire.encode_compact(wire.Update(wire.new_update_id(), "d", 1, bytes(32), 5, tensors), {2: 4096})
    monkeypatch.undo()
    assert native.decode_compact(data[15:], [4096], 100, 100, 10_000) is not None  # the C path takes it itself
    with accel.python_only():
        python = _compact_decode_spec(data, {2: 4096})
    assert not isinstance(python, str), python
    _same_compact(_compact_decode_spec(data, {2: 4096}), python)


def test_a_compact_update_with_a_negative_scale_is_handed_back_and_refused_by_name() -> None:
    codes = np.array([5, -6], np.int8)
    tensors = [TensorUpdate(2, 4096, np.array([3, 9], np.int64), CodedValues(ValueCoding.INT8, codes, -0.5))]
    data = wire.encode_compact(wire.Update(wire.new_update_id(), "d", 1, bytes(32), 5, tensors), {2: 4096})
    refusal = _compact_decode_spec(data, {2: 4096})
    assert isinstance(refusal, str) and "scale -0.5" in refusal
    with accel.python_only():
        assert _compact_decode_spec(data, {2: 4096}) == refusal


def _compact_decode_spec(data: bytes, spec: dict[int, int]) -> wire.Update | str:
    try:
        return wire.decode(data, spec=spec, device="d", versions=[bytes(32)])
    except wire.WireError as exc:
        return f"{type(exc).__name__}: {exc.field}: {exc}"


def test_heads_that_change_while_they_are_read_cannot_reach_freed_memory() -> None:
    """Subclasses of int run Python code when converted; the C path takes exact types only, and reads a
    snapshot of the list, so such code can neither shrink the list nor free the bytes it points into."""
    heads: list[Any] = []

    class Shrinking(int):
        def __index__(self) -> int:
            heads.clear()
            return 1

    heads += [(100, 1, 2, 0, b"\x05", 2, b"\x07", 0, 0, 1.0), (100, Shrinking(1), 2, 0, b"\x05", 2, b"\x07", 0, 0, 1.0)]
    assert native.decode_tensors(heads, 10) is None
    assert len(heads) == 2  # nothing ran
    live = [(10**6, 4000, 2, 0, bytes(4000), 2, bytes(4000), 0, 0, 1.0)]
    got = _c(live + live)  # the same bytes twice: read through the snapshot's references
    assert got is not None and got[0].size == 8000


def test_limits_too_large_for_the_c_scan_go_to_the_python_scan() -> None:
    assert not native.scan_ok(b"\x00", 2**70, 8)
    assert _python_scan(b"\x00", Limits(max_items=2**70))
    assert _c_scan(b"\x00", DEFAULT_LIMITS)


@pytest.mark.parametrize("field", ["max_nnz", "max_tensors", "max_numel"])
@pytest.mark.parametrize("value", [2**63, 2**70, -1, 0])
def test_any_limits_decode_as_the_python_code_does(field: str, value: int) -> None:
    """A limit configured as "unbounded" (2**63 and up) or nonsense (-1) never becomes an OverflowError on the
    intake's path: the C path leaves such limits to the Python code (found by a review)."""
    from dataclasses import replace

    limits = replace(DEFAULT_LIMITS, **{field: value})
    spec = {0: 10}
    codes = CodedValues(ValueCoding.INT8, np.array([3, -4], np.int8), 0.5)
    update = wire.Update(wire.new_update_id(), "d", 1, bytes(32), 5, [TensorUpdate(0, 10, np.array([2, 5]), codes)])

    def decode(data: bytes) -> wire.Update | str:
        try:
            return wire.decode(data, limits, spec=spec, device="d", versions=[bytes(32)])
        except wire.WireError as exc:
            return f"{type(exc).__name__}: {exc.field}: {exc}"

    for data in (wire.encode_compact(update, spec), wire.encode(update)):
        with accel.python_only():
            python = decode(data)
        _same_compact(decode(data), python)
