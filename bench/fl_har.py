"""Benchmark ``fl_har``: the 21 HAR training subjects as devices, the 1D-CNN, scored on the 9 test subjects.

Target 90%. The default runs 20 rounds (the suite's time budget); ``--full`` runs 50.
"""

from __future__ import annotations

from dataclasses import replace

from bench.fl_common import run_pair
from gateway.simulation import FederationSpec

SPEC = FederationSpec(
    data="har",
    rounds=50,
    epochs=2,
    learning_rate=0.02,
    density=0.01,
    strategy={"name": "fedavgm", "momentum": 0.8},
    report_every=10,
)


def main(full: bool = False) -> dict[str, float]:
    return run_pair("fl_har", SPEC if full else replace(SPEC, rounds=20), target=0.90)
