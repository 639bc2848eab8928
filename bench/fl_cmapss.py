"""Benchmark ``fl_cmapss``: the 100 C-MAPSS FD001 engines as devices; F1 of "fails within 30 cycles".

The reference is the same MLP trained centrally on all training engines,
scored the same way (``central_f1``). The suite runs 5 rounds of the headline and dense variants;
``--full`` runs 30.
"""

from __future__ import annotations

from dataclasses import replace

from bench.fl_common import run_sweep
from tinyfed.simulation import FederationSpec, central_baseline

SPEC = FederationSpec(
    data="cmapss",
    rounds=30,
    epochs=2,
    learning_rate=0.05,
    density=0.01,
    strategy={"name": "fedavgm", "momentum": 0.8},
    report_every=10,
    metric="f1",
)


def main(full: bool = False) -> dict[str, float]:
    spec = SPEC if full else replace(SPEC, rounds=5)
    central = central_baseline(spec, epochs=10)
    return run_sweep("fl_cmapss", spec, target=None, extra={"central_f1": central}, sweep=full, twin=full,
                     full_int8=full)
