"""Benchmark ``downlink`` (on demand, not in the suite): what the publisher's held scales cost in accuracy and bytes.

A held weight scale (gateway/downlink.py) lets weights outgrow it by ``[gateway] downlink_saturate`` before
it moves: those codes sit at +-127 while the float master keeps their values. Saturating keeps patches small
(a moved scale re-codes its whole channel), but the devices then train from clipped weights. This runs each
fl_* headline (its strategy, density and downlink cap) on plain MQTT with the wire metered, once per value in
``SATURATES`` and seed, over the same devices, and reports per value the final accuracy, the mean of the last
five rounds' (one round's score swings by a point or two on digits) and the bytes on air per device per round,
both ways (bench/fl_common.py ``per_device_round``: steady state, framing included), each averaged over the
seeds, against dense float32 both ways measured in the same run (a dense run's uplink on the wire, twice, over
a few rounds: every entry is sent every round, so its bytes do not change from round to round).

``tinyfed bench downlink`` runs digits: 50 rounds (fl_digits' headline) for each of 3 seeds, about a minute
a run on plain MQTT. ``--full`` adds HAR for 25 rounds, one seed, 0.25 and 0 (about 20 minutes a run here).
A run without ``--full`` keeps the HAR block a ``--full`` run stored (with its own date) when its settings still hold.
Plain MQTT rather than TLS with signatures so the proxy reads packets and the runs are shorter; fl_* report
the secured bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import replace
from typing import Any

from bench import fl_digits, fl_har
from bench.common import print_table, results_dir, write_result
from bench.fl_common import per_device_round
from tinyfed.simulation import FederationSpec, RoundRecord, run_federation

NAME = "downlink"
SATURATES = {"digits": (0.25, 0.1, 0.0), "har": (0.25, 0.0)}  # 0: the default since 2026-12-01, 0.25 before
SEEDS = {"digits": (0, 1, 2), "har": (0,)}
# Bumped when the gateway changes what these runs measure, so a stored block from before is not kept:
# 2: activation ranges move by max_range_growth per round between reports, not per report; 3: per version since
# ranges were last taken (the first report gets one version's growth, not report_every's), with 3 reporters;
# 4: rounds ask for reports off the schedule while ranges move or the weights grew ([rounds] range_settle).
REVISION = 4
DENSE_ROUNDS = 3  # two steady-state rounds of the dense baseline: its bytes do not vary by round
LAST = 5  # rounds averaged for the settled accuracy


def _key(saturate: float) -> str:
    return f"saturate_{100 * saturate:g}pct"


def _plain(spec: FederationSpec) -> FederationSpec:
    return replace(spec, secure=False, meter=True)


def _settings(data: str, spec: FederationSpec) -> dict[str, Any]:
    """What a stored block must match to be kept: the spec, the values, the seeds and the revision."""
    measured = replace(_plain(spec), downlink_saturate=0.0)  # each run sets its own: not part of the match
    return {"spec": {k: str(v) for k, v in vars(measured).items()}, "saturates": list(SATURATES[data]),
            "seeds": list(SEEDS[data]), "revision": REVISION}  # fmt: skip


def _run(label: str, spec: FederationSpec) -> Any:
    def show(r: RoundRecord) -> None:
        print(f"  {label:<32} round {r.round:>3}: {spec.metric} {r.score:.4f}", flush=True)

    return run_federation(spec, on_round=show)


def measure(data: str, spec: FederationSpec) -> dict[str, Any]:
    """Every saturate value and seed for one data set, and its dense baseline: the stored block."""
    dense = per_device_round(_run(f"{data} dense float32", replace(_plain(spec), density=1.0, value_coding=0,
                                                                   rounds=DENSE_ROUNDS)))  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {}
    for saturate in SATURATES[data]:
        for seed in SEEDS[data]:
            label = f"{data} {_key(saturate)} seed {seed}"
            result = _run(label, _plain(replace(spec, downlink_saturate=saturate, seed=seed)))
            wire = per_device_round(result)
            runs.setdefault(_key(saturate), []).append({"seed": seed, "scores": [r.score for r in result.rounds],
                                                        "up": wire.up, "down": wire.down, "by_kind": wire.kinds})
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {**_settings(data, spec), "when": when, "dense_up": dense.up, "runs": runs}


def figures_of(data: str, block: dict[str, Any]) -> dict[str, float]:
    """A block's figures, each averaged over its seeds."""
    dense_both = 2 * block["dense_up"]
    out = {f"{data}_dense_float32_both_ways_bytes_per_device_round": float(dense_both)}
    for key, runs in block["runs"].items():
        n = len(runs)
        finals = [run["scores"][-1] for run in runs]
        total = sum(run["up"] + run["down"] for run in runs) / n
        out |= {
            f"{data}_{key}_final_accuracy": sum(finals) / n,
            f"{data}_{key}_final_accuracy_spread": max(finals) - min(finals),
            f"{data}_{key}_last{LAST}_accuracy": sum(sum(run["scores"][-LAST:]) / LAST for run in runs) / n,
            f"{data}_{key}_best_accuracy": sum(max(run["scores"]) for run in runs) / n,
            f"{data}_{key}_wire_bytes_per_device_round": total,
            f"{data}_{key}_wire_downlink_bytes_per_device_round": sum(run["down"] for run in runs) / n,
            f"{data}_{key}_wire_ratio_vs_dense_float32_both_ways": dense_both / max(1.0, total),
        }
    return out


def _stored(data: str, spec: FederationSpec) -> dict[str, Any] | None:
    path = results_dir() / f"{NAME}.json"
    try:
        block = json.loads(path.read_text())["details"][data]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    settings = _settings(data, spec)
    return block if all(block.get(k) == v for k, v in settings.items()) else None


def main(full: bool = False) -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)
    har = replace(fl_har.SPEC, rounds=25)
    plan = {"digits": fl_digits.SPEC} | ({"har": har} if full else {})
    kept = None if full else _stored("har", har)  # read before this run's first write replaces the file
    blocks: dict[str, dict[str, Any]] = {} if kept is None else {"har": kept}
    if kept is not None:
        print(f"  har: kept from {kept['when']} (--full measures it again)")
    for data, spec in plan.items():
        blocks[data] = measure(data, spec)
        figures = {k: v for d, b in blocks.items() for k, v in figures_of(d, b).items()}
        write_result(NAME, figures, blocks)  # after each data set: a later failure keeps what was measured
    print_table(NAME, figures)
    return figures
