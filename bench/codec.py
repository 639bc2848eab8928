"""Benchmark ``codec``: how small and how fast a real sparse update is on the wire.

Deltas are real: the digits MLP (one Dirichlet(0.5) device of 30) and the HAR
1D-CNN (one training subject) each train one local epoch from a fresh model.
At densities 0.1%, 1% and 10% (per-tensor top-k, int8 values) it measures:
- bytes per nonzero of the whole encoded update (header included);
- the entropy bound of the same information: log2 C(numel, nnz) bits for the
  positions of each tensor plus the empirical entropy of the int8 codes
  (and 32 bits per tensor scale), and the ratio of the encoding to it;
- a naive CBOR list of [index, float] pairs, and dense float32 (the
  compression ratio);
- encode and decode throughput in dense-equivalent MB/s (dense float32 bytes
  the update stands for, per second), codec alone and with compression;
- each size both as the CBOR update (type 1, "before") and as the compact
  update (type 10, "after"), and the gateway's decode time per update for
  both (median of repeats, warm), in the same run.
Figures are named per model (``digits_mlp_*``, ``har_cnn_*``); the HAR CNN
needs the shared data folder (TINYFED_DATA_DIR) and is absent without it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import cbor2
import numpy as np

from bench.common import print_table, write_result
from edge_runtime import wire
from edge_runtime.compress import CompressionConfig, Compressor, decompress

DENSITIES = {"0.1pct": 0.001, "1pct": 0.01, "10pct": 0.1}


def real_deltas(arch: str) -> tuple[dict[int, np.ndarray], int]:
    """One local epoch on one device's share; returns tensor index -> delta, and the device's sample count."""
    from edge_runtime.data import partition
    from edge_runtime.data.sources import load_source
    from edge_runtime.model.info import quantize_input
    from edge_runtime.train.build import build_model
    from edge_runtime.train.trainer import TrainConfig, Trainer

    data = "digits" if arch == "mlp" else "har"
    split = load_source(data)
    graph = build_model(arch, split.train.x, split.train.classes, seed=0)
    if arch == "mlp":
        share = partition.dirichlet(split.train, 30, 0.5, seed=0)[0]
    else:
        share = partition.natural(split.train)[int(np.unique(split.train.groups)[0])]  # type: ignore[arg-type]
    trainer = Trainer(graph, config=TrainConfig(epochs=1, learning_rate=0.05 if arch == "mlp" else 0.02, seed=0))
    trainer.fit(quantize_input(graph, split.train.x[share]), split.train.y[share])
    return trainer.delta_by_tensor(), len(share)


def entropy_bits(update: wire.Update) -> float:
    bits = 0.0
    for t in update.tensors:
        n, k = t.numel, t.nnz
        bits += (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
        if k:
            _, counts = np.unique(t.values.codes, return_counts=True)
            p = counts / k
            bits += float(-(p * np.log2(p)).sum()) * k + 32  # codes + the tensor's scale
    return bits


def naive_cbor(deltas: dict[int, np.ndarray], update: wire.Update) -> int:
    offsets, start = {}, 0
    for t, d in deltas.items():
        offsets[t] = start
        start += d.size
    pairs = [
        [int(offsets[t.tensor] + i), float(v)]
        for t in update.tensors
        for i, v in zip(t.indices, t.values.decode(), strict=True)
    ]
    return len(cbor2.dumps(pairs))


def _rate(fn: Any, mb: float, min_seconds: float = 0.3) -> float:
    runs, t0 = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return mb * runs / elapsed


def _mean_us(fn: Any, min_seconds: float) -> float:
    runs, t0 = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / runs * 1e6


def _paired_us(first: Any, second: Any, repeats: int = 9, min_seconds: float = 0.04) -> tuple[float, float, float]:
    """Warm per-call times of two functions measured alternately, so both see the same machine load:
    (median of first, median of second, median of the per-repeat ratio second / first)."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        a.append(_mean_us(first, min_seconds))
        b.append(_mean_us(second, min_seconds))
    return float(np.median(a)), float(np.median(b)), float(np.median(np.array(b) / np.array(a)))


BASE = bytes(range(32))


def measure(arch: str) -> dict[str, Any]:
    deltas, samples = real_deltas(arch)
    dense_bytes = sum(d.size for d in deltas.values()) * 4
    spec = {t: d.size for t, d in deltas.items()}
    out: dict[str, Any] = {"parameters": dense_bytes // 4, "samples": samples}
    for label, density in DENSITIES.items():
        compressor = Compressor(CompressionConfig(density=density))
        result = compressor.compress(deltas)
        update = wire.Update(wire.new_update_id(), "device-0001", 1, BASE, samples, result.tensors)
        data = wire.encode(update)
        compact = wire.encode_compact(update, spec)
        nnz = sum(t.nnz for t in result.tensors)
        bound = entropy_bits(update) / 8
        mb = dense_bytes / 1e6
        header_only = len(wire.encode(wire.Update(update.update_id, update.device, 1, BASE, samples, [])))
        out[label] = {
            "nnz": nnz,
            "bytes": len(data),
            "compact_bytes": len(compact),
            "bytes_per_nnz": len(data) / nnz,
            "compact_bytes_per_nnz": len(compact) / nnz,
            "entropy_bound_bytes": bound,
            "entropy_ratio": len(data) / bound,
            "compact_entropy_ratio": len(compact) / bound,
            "payload_only_entropy_ratio": (len(data) - header_only) / bound,
            "naive_cbor_bytes": naive_cbor(deltas, update),
            "naive_cbor_ratio": naive_cbor(deltas, update) / len(data),
            "dense_float32_bytes": dense_bytes,
            "compression_ratio": dense_bytes / len(data),
            "compact_compression_ratio": dense_bytes / len(compact),
            "encode_mb_per_s": _rate(lambda u=update: wire.encode(u), mb),
            "compact_encode_mb_per_s": _rate(lambda u=update: wire.encode_compact(u, spec), mb),
            "compress_encode_mb_per_s": _rate(
                lambda c=compressor, u=update: wire.encode(
                    wire.Update(u.update_id, u.device, 1, BASE, samples, c.compress(deltas).tensors)
                ),
                mb,
            ),
            "decode_mb_per_s": _rate(lambda d=data: decompress(wire.decode(d, spec=spec).tensors), mb),
        }
        # What the gateway pays per update to read it (decode and check, no decompression), both layouts.
        cbor_us, compact_us, ratio = _paired_us(
            lambda d=data: wire.decode(d, spec=spec),
            lambda d=compact: wire.decode(d, spec=spec, device="device-0001", versions=(BASE,)),
        )
        out[label] |= {"decode_us": cbor_us, "compact_decode_us": compact_us, "compact_decode_time_ratio": ratio}
    return out


# Figure names per model, never one key for two models: the HAR CNN needs the shared data folder and is
# simply absent without it.
MODELS = {"digits_mlp": "mlp", "har_cnn": "cnn1d"}


def main(full: bool = False) -> dict[str, float]:
    from edge_runtime.data.sources import shared_data_dir

    names = ["digits_mlp"] + (["har_cnn"] if shared_data_dir() is not None else [])
    details = {name: measure(MODELS[name]) for name in names}
    figures: dict[str, float] = {}
    for name, d in details.items():
        for label in DENSITIES:
            r = d[label]
            # Before (CBOR update, type 1) and after (compact update, type 10), same deltas, same run.
            for key in (
                "bytes_per_nnz",
                "compact_bytes_per_nnz",
                "entropy_ratio",
                "compact_entropy_ratio",
                "payload_only_entropy_ratio",
                "naive_cbor_ratio",
                "compression_ratio",
                "compact_compression_ratio",
                "encode_mb_per_s",
                "decode_mb_per_s",
                "decode_us",
                "compact_decode_us",
                "compact_decode_time_ratio",
            ):
                figures[f"{name}_{key}_{label}"] = r[key]
    path = write_result("codec", figures, details)
    print_table("codec", figures)
    print(f"  -> {path}")
    return figures


if __name__ == "__main__":
    main()
