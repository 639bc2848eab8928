"""Benchmark ``aggregate``: the gateway's streaming sparse aggregation against a dense numpy mean.

A 100k-parameter model (the shapes of a small MLP) and N device updates
at 1% density, int8 values, encoded on the wire exactly as devices send
them. Both paths start from the encoded bytes and end with the
sample-weighted mean delta:

- sparse (the gateway's path): decode each update and fold it into
  ``StreamingAggregate`` as it arrives; memory O(model);
- dense (the baseline): decode each update to a dense float32 vector,
  stack the N vectors and take ``np.average``; memory O(model x devices).

Each path runs in its own fresh process, so peak memory (VmHWM, reset
after the inputs are built) belongs to the path alone. Results agree to
float32 precision, which the run checks.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result

SHAPES = {0: (256, 256), 1: (256,), 2: (128, 256), 3: (128,), 4: (10, 128), 5: (10,)}  # 99,978 parameters


def make_updates(count: int, density: float = 0.01, seed: int = 0) -> list[bytes]:
    from edge_runtime import wire
    from edge_runtime.compress import CompressionConfig, Compressor

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        deltas = {t: rng.standard_normal(shape).astype(np.float32) * 0.01 for t, shape in SHAPES.items()}
        tensors = Compressor(CompressionConfig(density=density, seed=i)).compress(deltas).tensors
        out.append(wire.encode(wire.Update(os.urandom(16), f"d{i}", 1, bytes(32), int(rng.integers(20, 400)), tensors)))
    return out


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run(path: str, payloads: list[bytes], queue: Any) -> None:
    from edge_runtime import wire
    from gateway.aggregate import StreamingAggregate

    spec = {t: int(np.prod(s)) for t, s in SHAPES.items()}
    _reset_peak()
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    if path == "sparse":
        aggregate = StreamingAggregate(spec)
        for payload in payloads:
            aggregate.add(wire.decode(payload, expect=wire.Update, spec=spec))
        mean = np.concatenate([aggregate.round_input().mean[t] for t in spec])
    else:
        rows = np.empty((len(payloads), sum(spec.values())), np.float32)
        weights = np.empty(len(payloads))
        bounds = np.cumsum([0, *spec.values()])
        for i, payload in enumerate(payloads):
            update = wire.decode(payload, expect=wire.Update, spec=spec)
            rows[i] = 0
            for t in update.tensors:
                lo = bounds[list(spec).index(t.tensor)]
                rows[i, lo + t.indices] = t.values.decode()
            weights[i] = update.samples
        mean = np.average(rows, axis=0, weights=weights)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "peak_mib": _status_mib("VmHWM") - base, "checksum": float(np.abs(mean).sum())})


def measure(path: str, payloads: list[bytes]) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(path, payloads, queue))
    proc.start()
    result: dict[str, float] = queue.get(timeout=600)
    proc.join(60)
    return result


def main(full: bool = False) -> dict[str, float]:
    count = 1000 if full else 300
    payloads = make_updates(count)
    sparse = measure("sparse", payloads)
    dense = measure("dense", payloads)
    if not np.isclose(sparse["checksum"], dense["checksum"], rtol=1e-4):
        raise AssertionError(f"paths disagree: {sparse['checksum']} vs {dense['checksum']}")
    figures = {
        "sparse_updates_per_s": count / sparse["seconds"],
        "dense_updates_per_s": count / dense["seconds"],
        "sparse_vs_dense_speedup": dense["seconds"] / sparse["seconds"],
        "peak_rss_mib": sparse["peak_mib"],
        "dense_peak_rss_mib": dense["peak_mib"],
        "dense_vs_sparse_memory_ratio": dense["peak_mib"] / max(sparse["peak_mib"], 1e-3),
    }
    details = {
        "updates": count,
        "parameters": int(sum(np.prod(s) for s in SHAPES.values())),
        "density": 0.01,
        "mean_update_bytes": float(np.mean([len(p) for p in payloads])),
        "sparse": sparse,
        "dense": dense,
        "note": "peak_rss_mib: growth of VmHWM over the resident size with the encoded updates in memory",
    }
    path = write_result("aggregate", figures, details)
    print_table("aggregate", figures)
    print(f"wrote {path}")
    return figures
