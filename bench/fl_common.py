"""Shared by the ``fl_*`` benchmarks: one federation in several variants, side by side, and their plot.

Every run uses the same devices, data shares, model and seed: the spec as
given (the headline), dense (every entry as float32: compression off),
10%, 1% and 0.1% density with the spec's strategy, and FedAvg and FedAdam
(the adaptive one) at the spec's density. Figures: ``final_accuracy`` (F1
for C-MAPSS) of the headline run's last round, ``best_accuracy``,
``rounds_to_target`` (first round at or above the target, -1 if never),
``uplink_ratio_vs_dense`` (cumulative uplink bytes of the dense run over
the headline run's: the baseline is measured in the same run),
``dense_final_accuracy``, and per other run its final accuracy and uplink
ratio. The PNG plots accuracy against cumulative uplink for every run.

Bytes on the wire, both ways (``wire_*``): every run puts a TCP proxy between the devices and the broker
(tinyfed/wiremeter.py), so MQTT framing, PUBACKs, pings and, secured, TLS are counted; per device per round
from the first round's close to the last's (steady state: connecting and the first whole model left out).
``wire_ratio_vs_dense_float32_both_ways`` compares with the dense run's uplink on the wire twice (a float32
model of the same tensors down, a float32 update up), ``wire_ratio_vs_full_int8`` with a run that sends the
whole int8 model each round (no patches), and ``uplink_vs_update_publish`` (from the insecure twin, whose
MQTT packets the proxy reads) is the devices' whole uplink over their updates' own PUBLISH bytes.

The headline run is secured as ``tinyfed demo`` is on Mosquitto (TLS,
client certificates, ACL, every message signed); an insecure twin of it
gives ``secured_vs_insecure_seconds_per_round`` and
``secured_vs_insecure_uplink`` (ratios of the two, measured in the same run).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from bench.common import print_table, results_dir, write_result
from bench.plot import accuracy_vs_uplink, accuracy_vs_uplink_text
from tinyfed.simulation import FederationResult, FederationSpec, RoundRecord, run_federation
from tinyfed.wiremeter import Counts

DENSITIES = (0.1, 0.01, 0.001)
FULL_INT8 = "full int8 downlink"  # the variant that sends the whole int8 model each round (no patches)


def per_device_round(result: FederationResult) -> Counts:
    """The devices' bytes on the wire per device per round, both ways, MQTT framing (and TLS) included: from the
    first round's close to the last's, so connecting and the first whole model are left out (steady state)."""
    first, last = result.rounds[0].wire, result.rounds[-1].wire
    if first is None or last is None or len(result.rounds) < 2:
        raise ValueError("the federation was not metered over two rounds or more")
    d = last.minus(first)
    n = result.devices * (len(result.rounds) - 1)
    return Counts(round(d.up / n), round(d.down / n), {k: [round(v[0] / n), round(v[1] / n)] for k, v in
                                                       d.kinds.items() if v != [0, 0]})  # fmt: skip


def wire_figures(results: dict[str, FederationResult], labels: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Bytes on air per device per round, both ways, against dense float32 both ways and a whole int8 model a
    round. Dense float32 both ways is the dense run's uplink on the wire, twice: a float32 model of the same
    tensors, framed the same way, is what an uncompressed framework sends down."""
    wire = {label: per_device_round(result) for label, result in results.items()}
    head, dense = wire[labels[0]], wire[labels[1]]
    full = next((w for label, w in wire.items() if label.endswith(FULL_INT8)), None)
    dense_both = 2 * dense.up
    figures = {
        "wire_uplink_bytes_per_device_round": float(head.up),
        "wire_downlink_bytes_per_device_round": float(head.down),
        "wire_bytes_per_device_round": float(head.up + head.down),
        "dense_float32_both_ways_bytes_per_device_round": float(dense_both),
        "wire_ratio_vs_dense_float32_both_ways": dense_both / max(1, head.up + head.down),
    }
    if full is not None:
        figures["full_int8_bytes_per_device_round"] = float(full.up + full.down)
        figures["wire_ratio_vs_full_int8"] = (full.up + full.down) / max(1, head.up + head.down)
    plain = next((w for label, w in wire.items() if label.endswith(" insecure")), None)
    if plain is not None and plain.kinds.get("PUBLISH update", [0])[0]:
        # Plain MQTT: the proxy reads packets, so the update's own PUBLISH is known to the byte.
        figures["uplink_vs_update_publish"] = plain.up / plain.kinds["PUBLISH update"][0]
        figures["insecure_wire_bytes_per_device_round"] = float(plain.up + plain.down)
    details = {label: {"up": w.up, "down": w.down, "by_kind": w.kinds} for label, w in wire.items()}
    return figures, details


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


def variants(
    spec: FederationSpec, sweep: bool = True, twin: bool = True, full_int8: bool = True
) -> dict[str, FederationSpec]:
    """The spec as given (the headline run), dense float32, its insecure twin, each density of the sweep, FedAvg
    and FedAdam.

    ``sweep=False`` keeps the headline and dense runs (and the twin unless ``twin=False``): what the headline
    figures need, for a suite run within its time budget; ``--full`` runs every variant.
    """
    strategy = str(spec.strategy["name"])
    spec = replace(spec, meter=True)
    out = {
        f"{strategy} {100 * spec.density:g}% (headline)": spec,
        f"{strategy} dense float32": replace(spec, density=1.0, value_coding=0),
    }
    if twin or sweep:
        out[f"{strategy} {100 * spec.density:g}% insecure"] = replace(spec, secure=False)
    if full_int8 or sweep:
        out[f"{strategy} {100 * spec.density:g}% {FULL_INT8}"] = replace(spec, patches=False, downlink_density=0.0)
    if sweep:
        for density in DENSITIES:
            if density != spec.density:
                out[f"{strategy} {100 * density:g}%"] = replace(spec, density=density)
        out[f"fedavg {100 * spec.density:g}%"] = replace(spec, strategy={"name": "fedavg"})
        out[f"fedadam {100 * spec.density:g}%"] = replace(spec, strategy={"name": "fedadam"})
    return out


def run_sweep(
    name: str, spec: FederationSpec, target: float | None, extra: dict[str, float] | None = None, sweep: bool = True,
    twin: bool = True, full_int8: bool = True,
) -> dict[str, float]:
    """Every variant of ``spec`` over the same devices; figures, per-round rows, and the PNG."""
    logging.basicConfig(level=logging.ERROR)
    results: dict[str, FederationResult] = {}
    seconds: dict[str, float] = {}
    for label, variant in variants(spec, sweep, twin, full_int8).items():
        started = time.perf_counter()

        def show(r: RoundRecord, label: str = label) -> None:
            print(
                f"  {label:<28} round {r.round:>3}: {spec.metric} {r.score:.4f}, uplink {r.uplink_bytes:,} B",
                flush=True,
            )

        results[label] = run_federation(variant, on_round=show)
        seconds[label] = time.perf_counter() - started
    labels = list(results)
    head, dense = results[labels[0]], results[labels[1]]
    insecure = results.get(labels[2]) if len(labels) > 2 and labels[2].endswith(" insecure") else None
    scores = [r.score for r in head.rounds]
    reached = [r.round for r in head.rounds if target is not None and r.score >= target]
    dense_bytes = dense.rounds[-1].uplink_bytes
    figures = {
        "final_accuracy": scores[-1],
        "best_accuracy": max(scores),
        "rounds_to_target": float(reached[0]) if reached else -1.0,
        "uplink_ratio_vs_dense": dense_bytes / head.rounds[-1].uplink_bytes,
        "dense_final_accuracy": dense.rounds[-1].score,
        "accuracy_gap_pts": 100 * (dense.rounds[-1].score - scores[-1]),
        "devices": float(head.devices),
        "rounds": float(len(head.rounds)),
        "seconds_per_round": seconds[labels[0]] / max(1, len(head.rounds)),
        **(extra or {}),
    }
    if insecure is not None:
        # Signatures and TLS against neither, same devices and seed: round time (the federations' own round
        # durations, summed) and uplink bytes.
        figures["secured_vs_insecure_seconds_per_round"] = sum(r.seconds for r in head.rounds) / max(
            1e-9, sum(r.seconds for r in insecure.rounds)
        )
        figures["secured_vs_insecure_uplink"] = head.rounds[-1].uplink_bytes / max(1, insecure.rounds[-1].uplink_bytes)
    for label in labels[3 if insecure is not None else 2 :]:
        key = label.replace(" ", "_").replace("%", "pct")
        figures[f"final_accuracy_{key}"] = results[label].rounds[-1].score
        figures[f"uplink_ratio_vs_dense_{key}"] = dense_bytes / max(1, results[label].rounds[-1].uplink_bytes)
    on_wire, wire_details = wire_figures(results, labels)
    figures |= on_wire
    rows = {label: _rows(result) for label, result in results.items()}
    plot = accuracy_vs_uplink(
        f"{name}: {head.devices} devices, {len(head.rounds)} rounds", spec.metric, rows, results_dir() / f"{name}.png"
    )
    details = {
        "spec": {k: v for k, v in vars(spec).items()},
        "target": target,
        "broker": head.broker,
        "runs": rows,
        "final_evaluation": {label: result.final_evaluation for label, result in results.items()},
        "seconds": seconds,
        "plot": str(plot.name) if plot else None,
        "wire_per_device_round": wire_details,
    }
    path = write_result(name, figures, details)
    print(accuracy_vs_uplink_text(spec.metric, rows))
    print_table(name, figures)
    print(f"wrote {path}" + (f" and {plot}" if plot else ""))
    return figures
