"""Benchmark ``fl_har``: the 21 HAR training subjects as devices, the 1D-CNN, scored on the 9 test subjects.

Target 90%. A round takes about 20 s on 2 cores, so the suite (15 minutes for everything) runs
2 rounds of the headline and dense variants; ``--full`` runs the whole sweep for 25 rounds
(about an hour).
"""

from __future__ import annotations

from dataclasses import replace

from bench.fl_common import run_sweep
from tinyfed.simulation import FederationSpec

SPEC = FederationSpec(
    data="har",
    rounds=50,
    epochs=2,
    learning_rate=0.02,
    density=0.01,
    strategy={"name": "fedavgm", "momentum": 0.8},
    report_every=10,
    downlink_density=0.02,  # a version moves at most 2% of each weight tensor's int8 codes (gateway/downlink.py)
)


def main(full: bool = False) -> dict[str, float]:
    if full:
        return run_sweep("fl_har", replace(SPEC, rounds=25), target=0.90)
    return run_sweep("fl_har", replace(SPEC, rounds=2), target=0.90, sweep=False, twin=False)
