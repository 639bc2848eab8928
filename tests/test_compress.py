"""Sparsification, quantisation and error feedback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.compress import CompressionConfig, Compressor, ResidualStore, Selection, decompress, quantize_values
from edge_runtime.wire import ValueCoding

RNG = np.random.default_rng(0)
DELTAS = {3: RNG.normal(size=(32, 16)).astype(np.float32), 4: RNG.normal(size=32).astype(np.float32) * 0.1}


@given(st.sampled_from(list(Selection)), st.sampled_from(list(ValueCoding)), st.floats(0.01, 1.0), st.booleans())
@settings(max_examples=60, deadline=None)
def test_sent_plus_residual_is_exactly_the_delta(
    selection: Selection, coding: ValueCoding, density: float, stochastic: bool
) -> None:
    c = Compressor(
        CompressionConfig(
            density=density, selection=selection, threshold=0.5, value_coding=coding, stochastic=stochastic
        )
    )
    result = c.compress(DELTAS)
    sent = decompress(result.tensors)
    for t, delta in DELTAS.items():
        shipped = sent.get(t, np.zeros(delta.size, np.float32))  # tensors with nothing kept are not sent
        np.testing.assert_allclose(shipped + result.residual[t], delta.ravel(), rtol=0, atol=1e-6)


def test_residual_is_added_next_round_and_survives_a_restart(tmp_path: Path) -> None:
    store = ResidualStore(tmp_path / "residual.npz")
    c = Compressor(CompressionConfig(density=0.05), store)
    first = c.compress(DELTAS)
    c.commit(first)
    restarted = Compressor(CompressionConfig(density=0.05), ResidualStore(tmp_path / "residual.npz"))
    for t in DELTAS:
        np.testing.assert_array_equal(restarted.residual[t], first.residual[t])
    zero = {t: np.zeros_like(d) for t, d in DELTAS.items()}
    second = restarted.compress(zero)  # nothing new: only what was held back is sent
    assert sum(t.nnz for t in second.tensors) > 0
    assert all(np.abs(t.dense()).max() > 0 for t in second.tensors)


def test_uncommitted_result_does_not_touch_the_residual(tmp_path: Path) -> None:
    c = Compressor(CompressionConfig(density=0.05), ResidualStore(tmp_path / "r.npz"))
    c.compress(DELTAS)
    assert c.residual == {} and not (tmp_path / "r.npz").exists()


def test_corrupt_residual_file_is_set_aside_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.npz"
    path.write_bytes(b"not an npz")
    assert ResidualStore(path).load() == {}
    assert (tmp_path / "r.corrupt").read_bytes() == b"not an npz"
    assert "unreadable" in caplog.text


def test_top_k_keeps_the_largest_entries_per_tensor_and_globally() -> None:
    per = Compressor(
        CompressionConfig(density=0.1, selection=Selection.TOPK, value_coding=ValueCoding.FLOAT32)
    ).compress(DELTAS)
    for t in per.tensors:
        flat = DELTAS[t.tensor].ravel()
        k = round(0.1 * flat.size)
        assert t.nnz == k
        assert np.abs(flat[t.indices]).min() >= np.sort(np.abs(flat))[-k]
    glob = Compressor(CompressionConfig(density=0.1, selection=Selection.GLOBAL_TOPK)).compress(DELTAS)
    total = sum(d.size for d in DELTAS.values())
    assert sum(t.nnz for t in glob.tensors) == round(0.1 * total)
    # The tensor with small deltas gives up its share, and an empty entry is not sent at all.
    assert all(t.nnz > 0 for t in glob.tensors)
    assert sum(t.nnz for t in glob.tensors if t.tensor == 4) < round(0.1 * 32)


def test_threshold_selection() -> None:
    res = Compressor(CompressionConfig(selection=Selection.THRESHOLD, threshold=1.0)).compress(DELTAS)
    for t in res.tensors:
        assert t.nnz == int((np.abs(DELTAS[t.tensor]) >= 1.0).sum())


def test_stochastic_int8_rounding_is_unbiased_and_deterministic_is_nearest() -> None:
    v = np.full(20000, 0.3, np.float32)
    v[0] = 1.0  # scale = 1/127 rounded up to a bfloat16 (1/126.02): 0.3 lies between codes 37 and 38
    rng = np.random.default_rng(1)
    coded = quantize_values(v, ValueCoding.INT8, True, rng)
    assert 1 / 127 <= coded.scale <= 1 / 127 * (1 + 2**-7)
    stochastic = coded.decode()
    assert abs(stochastic[1:].mean() - 0.3) < 1e-3
    low = int(0.3 // coded.scale)
    assert set(np.unique(coded.codes[1:]).tolist()) == {low, low + 1}
    nearest = quantize_values(v, ValueCoding.INT8).decode()
    assert np.unique(nearest[1:]).size == 1 and abs(nearest[1] - 0.3) <= 0.5 * coded.scale


def test_ternary_and_float16() -> None:
    v = np.array([0.5, -1.0, 0.25, -0.25], np.float32)
    t = quantize_values(v, ValueCoding.TERNARY)
    assert t.codes.tolist() == [1, -1, 1, -1] and t.scale == pytest.approx(0.5)
    f = quantize_values(np.array([1e6, -1.5], np.float32), ValueCoding.FLOAT16)
    assert f.decode().tolist() == [65504.0, -1.5]


def test_bad_configuration_and_non_finite_deltas_are_refused() -> None:
    with pytest.raises(ValueError, match="density"):
        CompressionConfig(density=0)
    with pytest.raises(ValueError, match="threshold"):
        CompressionConfig(selection=Selection.THRESHOLD)
    with pytest.raises(ValueError, match="tensor 3"):
        Compressor(CompressionConfig()).compress({3: np.array([1.0, np.nan], np.float32)})


def test_compressed_update_travels_and_decompresses_to_shape() -> None:
    res = Compressor(CompressionConfig(density=0.05)).compress(DELTAS)
    update = wire.Update(bytes(16), "d", 1, bytes(32), 10, res.tensors)
    back = wire.decode(wire.encode(update), spec={t: d.size for t, d in DELTAS.items()})
    dense = decompress(back.tensors, {t: d.shape for t, d in DELTAS.items()})
    expected = decompress(res.tensors, {t: d.shape for t, d in DELTAS.items()})
    assert dense.keys() == expected.keys() and dense
    for t in dense:
        assert dense[t].shape == DELTAS[t].shape
        np.testing.assert_array_equal(dense[t], expected[t])
