"""Benchmark ``aggregate``: CPU per update of the gateway's whole intake, against a dense framework's intake.

A 100k-parameter model (the shapes of a small MLP) and N device updates
at 1% density, int8 values, encoded on the wire exactly as devices send
them. Both paths take one update's bytes into a running aggregate:

- sparse (the gateway's intake): decode the update against the model's
  spec, validate it (its norm, and the admission rules the gateway
  applies: ``gateway.admission.admit`` against a ledger that knows the
  task), and fold it into ``StreamingAggregate``;
- dense (a dense framework's intake of the same updates): deserialise a
  float32 array of the whole model (``np.frombuffer``: zero-copy, the
  cheapest a framework can do) and add it, weighted, into a running
  float32 sum.

Measured warm (one pass of each first), as CPU time of this process
(``time.process_time``), alternating the paths, the median of several
repeats; the sparse intake is also split into its three steps, so the
share of decoding is known. Both aggregates are checked to agree.

The gateway decodes with its C path (edge_runtime/wire/_cwire.c: the bounds
scan, a CBOR update's tensor streams and the compact bit stream) when it is built, as it is wherever a hub has a
compiler; the same steps run again with the Python code alone
(``accel.python_only()``), so ``c_path_speedup`` (decode) and
``sparse_python_intake_us_per_update`` are ratios of one run. ``c_path_built``
says which the headline figures are. The same updates also go through the
intake in the compact layout (Python devices' default; boards send CBOR):
``compact_intake_us_per_update`` and ``dense_vs_compact_cpu_ratio``, with and
without the C path.

In the same run: ``careful_decode_us_per_update``, the same updates decoded
tensor by tensor (``Update.from_reader(fast=False)``, the decoder the
gateway used before the batched one, and still its fallback), so the
decoder's gain is a ratio of one run; and ``verify_us_per_update``, the
Ed25519 check of each update signed as a secured device signs it
(COSE_Sign1), which the intake figures do not count: the benchmark's
gateway is insecure, as every benchmark but trust's, and a secured
gateway pays it on top.
Figures: ``sparse_intake_us_per_update``, ``dense_intake_us_per_update``
and their ratio ``dense_vs_sparse_cpu_ratio`` (above 1: the sparse intake
costs less CPU), ``decode_share`` (of the sparse intake), and the bytes of
each kind of update.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from bench.common import print_table, write_result

SHAPES = {0: (256, 256), 1: (256,), 2: (128, 256), 3: (128,), 4: (10, 128), 5: (10,)}  # 99,978 parameters
REPEATS = 7


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


class _Ledger:
    """What admission asks of the store, answered as for a device whose task is open: every rule is checked."""

    def known_update(self, update_id: bytes) -> str | None:
        return None

    def task(self, round_: int, device: str, kind: str) -> Any:
        from gateway.admission import TaskRecord

        return TaskRecord("sent", bytes(32))

    def model_seq(self, version: bytes) -> int | None:
        return 0


def _cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def measure(payloads: list[bytes], repeats: int = REPEATS) -> dict[str, Any]:
    from edge_runtime import wire
    from edge_runtime.wire import accel
    from gateway.admission import AdmissionRules, RoundView, admit
    from gateway.aggregate import StreamingAggregate, update_norm

    spec = {t: int(np.prod(s)) for t, s in SHAPES.items()}
    bounds = np.cumsum([0, *spec.values()])
    starts = dict(zip(spec, bounds[:-1], strict=True))
    decoded = [wire.decode(p, expect=wire.Update, spec=spec) for p in payloads]
    # The dense framework's updates: the same deltas, every entry, float32, and the sample count beside them.
    dense: list[tuple[bytes, int]] = []
    for update in decoded:
        row = np.zeros(int(bounds[-1]), np.float32)
        for t in update.tensors:
            row[starts[t.tensor] + t.indices] = t.values.decode()
        dense.append((row.tobytes(), update.samples))
    rules = AdmissionRules("sync", 1000.0, 5)
    view, ledger = RoundView(1, "sync", bytes(32)), _Ledger()
    # The same updates in the compact layout (what Python devices send by default): the device is the topic's.
    compact = [(u.device, wire.encode_compact(replace(u, update_id=wire.new_update_id()), spec)) for u in decoded]
    versions = [bytes(32)]

    def take(aggregate: StreamingAggregate, update: wire.Update) -> None:
        """What the gateway does with a decoded update: its norm, admission, the fold."""
        norm = update_norm(update)
        verdict = admit(update, update.device, norm, view, bytes(32), ledger, rules)
        if not verdict.accepted:
            raise AssertionError(f"the benchmark's update was refused: {verdict.reason}")
        aggregate.add(update, verdict.weight_factor, norm, verdict.samples)

    def sparse() -> StreamingAggregate:
        aggregate = StreamingAggregate(spec)
        for payload in payloads:
            take(aggregate, wire.decode(payload, expect=wire.Update, spec=spec))
        return aggregate

    def sparse_compact() -> StreamingAggregate:
        aggregate = StreamingAggregate(spec)
        for device, payload in compact:
            take(aggregate, wire.decode(payload, expect=wire.Update, spec=spec, device=device, versions=versions))
        return aggregate

    def dense_intake() -> tuple[np.ndarray, float]:
        running, total = np.zeros(int(bounds[-1]), np.float32), 0.0
        for data, samples in dense:
            running += np.frombuffer(data, np.float32) * np.float32(samples)
            total += samples
        return running, total

    def decode_only() -> None:
        for payload in payloads:
            wire.decode(payload, expect=wire.Update, spec=spec)

    def careful_decode() -> None:
        from edge_runtime.wire.cbor import loads
        from edge_runtime.wire.limits import DEFAULT_LIMITS
        from edge_runtime.wire.schema import MapReader

        for payload in payloads:
            wire.Update.from_reader(MapReader(loads(payload, DEFAULT_LIMITS), "update"), DEFAULT_LIMITS, spec, False)

    signer = wire.Ed25519Signer.generate()
    verifier = wire.Ed25519Verifier({signer.key_id: signer.public_key()})
    signed = [wire.sign(p, signer) for p in payloads]

    def verify_only() -> None:
        for data in signed:
            wire.open_envelope(data, wire.DEFAULT_LIMITS, verifier, require_signature=True)

    def validate_only() -> None:
        for update in decoded:
            admit(update, update.device, update_norm(update), view, bytes(32), ledger, rules)

    def fold_only() -> None:
        aggregate = StreamingAggregate(spec)
        for update in decoded:
            aggregate.add(update)

    # Warm: each path once, and the results compared.
    aggregate = sparse()
    running, total = dense_intake()
    mean = np.concatenate([aggregate.round_input().mean[t] for t in spec])
    if not np.allclose(mean, running / total, rtol=1e-3, atol=1e-7):
        raise AssertionError("the sparse and dense intakes disagree on the mean")
    if not np.array_equal(np.concatenate([sparse_compact().round_input().mean[t] for t in spec]), mean):
        raise AssertionError("the compact and CBOR intakes disagree on the mean")
    with accel.python_only():
        python_aggregate = sparse()
    if not np.array_equal(np.concatenate([python_aggregate.round_input().mean[t] for t in spec]), mean):
        raise AssertionError("the C path and the Python code disagree on the mean")
    for step in (decode_only, validate_only, fold_only, careful_decode, verify_only):
        step()
    times: dict[str, list[float]] = {
        "sparse": [], "dense": [], "decode": [], "validate": [], "fold": [], "careful_decode": [], "verify": [],
        "sparse_python": [], "decode_python": [], "compact": [], "compact_python": [],
    }  # fmt: skip
    for _ in range(repeats):  # alternated, so a busy moment of a shared machine hits both
        with accel.python_only():
            times["sparse_python"].append(_cpu(sparse))
            times["decode_python"].append(_cpu(decode_only))
            times["compact_python"].append(_cpu(sparse_compact))
        times["compact"].append(_cpu(sparse_compact))
        times["sparse"].append(_cpu(sparse))
        times["dense"].append(_cpu(dense_intake))
        times["decode"].append(_cpu(decode_only))
        times["validate"].append(_cpu(validate_only))
        times["fold"].append(_cpu(fold_only))
        times["careful_decode"].append(_cpu(careful_decode))
        times["verify"].append(_cpu(verify_only))
    n = len(payloads)
    per = {k: 1e6 * statistics.median(v) / n for k, v in times.items()}
    return {
        "us_per_update": per,
        "repeats": repeats,
        "sparse_bytes": float(np.mean([len(p) for p in payloads])),
        "compact_bytes": float(np.mean([len(p) for _, p in compact])),
        "dense_bytes": float(len(dense[0][0])),
    }


def main(full: bool = False) -> dict[str, float]:
    from edge_runtime.wire import accel

    count = 1000 if full else 200
    payloads = make_updates(count)
    result = measure(payloads, REPEATS * 2 if full else REPEATS)
    per = result["us_per_update"]
    steps = per["decode"] + per["validate"] + per["fold"]
    figures = {
        "sparse_intake_us_per_update": round(per["sparse"], 1),
        "dense_intake_us_per_update": round(per["dense"], 1),
        "dense_vs_sparse_cpu_ratio": round(per["dense"] / per["sparse"], 4),
        "decode_share": round(per["decode"] / steps, 3),
        "validate_share": round(per["validate"] / steps, 3),
        "fold_share": round(per["fold"] / steps, 3),
        "decode_us_per_update": round(per["decode"], 1),
        "careful_decode_us_per_update": round(per["careful_decode"], 1),
        "decoder_speedup": round(per["careful_decode"] / per["decode"], 2),
        "verify_us_per_update": round(per["verify"], 1),
        "c_path_built": int(accel.built is not None),
        "sparse_python_intake_us_per_update": round(per["sparse_python"], 1),
        "decode_python_us_per_update": round(per["decode_python"], 1),
        "c_path_speedup": round(per["decode_python"] / per["decode"], 2),
        "dense_vs_sparse_python_cpu_ratio": round(per["dense"] / per["sparse_python"], 4),
        "compact_intake_us_per_update": round(per["compact"], 1),
        "compact_python_intake_us_per_update": round(per["compact_python"], 1),
        "dense_vs_compact_cpu_ratio": round(per["dense"] / per["compact"], 4),
        "compact_update_bytes": round(result["compact_bytes"], 1),
        "sparse_update_bytes": round(result["sparse_bytes"], 1),
        "dense_update_bytes": result["dense_bytes"],
    }
    details = {
        "updates": count,
        "parameters": int(sum(np.prod(s) for s in SHAPES.values())),
        "density": 0.01,
        **result,
        "note": "CPU time (process_time), warm, median of the repeats; the paths alternate within each repeat. "
        "Measured on a shared 2-core machine: the ratio is the figure that carries.",
    }
    path = write_result("aggregate", figures, details)
    print_table("aggregate", figures)
    print(f"wrote {path}")
    return figures
