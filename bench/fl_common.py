"""Shared by the ``fl_*`` benchmarks: one federation compressed, the same federation dense, side by side.

Both runs use the same devices, data shares, model, seed and strategy;
"dense" sends every entry as float32 (compression off). Figures:
``final_accuracy`` (F1 for C-MAPSS) of the compressed run's last round,
``best_accuracy``, ``rounds_to_target`` (first round at or above the target,
-1 if never), ``uplink_ratio_vs_dense`` (cumulative uplink bytes of the
dense run over the compressed run's), ``dense_final_accuracy``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from bench.common import print_table, write_result
from gateway.simulation import FederationResult, FederationSpec, RoundRecord, run_federation


def _rows(result: FederationResult) -> list[dict[str, Any]]:
    return [
        {
            "round": r.round,
            "score": r.score,
            "federated_accuracy": r.federated_accuracy,
            "uplink_bytes": r.uplink_bytes,
            "dense_bytes": r.dense_bytes,
            "seconds": r.seconds,
        }
        for r in result.rounds
    ]


def run_pair(
    name: str, spec: FederationSpec, target: float | None, extra: dict[str, float] | None = None
) -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)

    def progress(label: str) -> Any:
        def show(r: RoundRecord) -> None:
            print(f"  {label} round {r.round:>3}: {spec.metric} {r.score:.4f}, uplink {r.uplink_bytes:,} B", flush=True)

        return show

    t0 = time.perf_counter()
    compressed = run_federation(spec, on_round=progress("compressed"))
    t1 = time.perf_counter()
    dense_spec = replace(spec, density=1.0, value_coding=0)
    dense = run_federation(dense_spec, on_round=progress("dense"))
    t2 = time.perf_counter()
    scores = [r.score for r in compressed.rounds]
    last = compressed.rounds[-1]
    reached = [r.round for r in compressed.rounds if target is not None and r.score >= target]
    figures = {
        "final_accuracy": scores[-1],
        "best_accuracy": max(scores),
        "rounds_to_target": float(reached[0]) if reached else -1.0,
        "uplink_ratio_vs_dense": dense.rounds[-1].uplink_bytes / last.uplink_bytes,
        "uplink_ratio_vs_dense_float32_estimate": last.dense_bytes / last.uplink_bytes,
        "dense_final_accuracy": dense.rounds[-1].score,
        "dense_best_accuracy": max(r.score for r in dense.rounds),
        "accuracy_gap_pts": 100 * (dense.rounds[-1].score - scores[-1]),
        "devices": float(compressed.devices),
        "seconds_per_round": (t1 - t0) / max(1, len(compressed.rounds)),
        **(extra or {}),
    }
    details = {
        "spec": {k: v for k, v in vars(spec).items()},
        "target": target,
        "broker": compressed.broker,
        "compressed": _rows(compressed),
        "dense": _rows(dense),
        "final_evaluation": {"compressed": compressed.final_evaluation, "dense": dense.final_evaluation},
        "seconds": {"compressed": t1 - t0, "dense": t2 - t1},
    }
    path = write_result(name, figures, details)
    print_table(name, figures)
    print(f"wrote {path}")
    return figures
