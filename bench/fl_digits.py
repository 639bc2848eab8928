"""Benchmark ``fl_digits``: 30 devices, Dirichlet(0.5) label skew, the MLP, over Mosquitto; target 93%."""

from __future__ import annotations

from dataclasses import replace

from bench.fl_common import run_sweep
from tinyfed.simulation import FederationSpec

SPEC = FederationSpec(
    data="digits",
    devices=30,
    alpha=0.5,
    rounds=50,
    epochs=5,
    learning_rate=0.05,
    density=0.006,
    strategy={"name": "fedavgm", "momentum": 0.8},
    report_every=10,
    downlink_density=0.05,  # a version moves at most 5% of each weight tensor's int8 codes (gateway/downlink.py)
)


def main(full: bool = False) -> dict[str, float]:
    """The suite runs 15 rounds of the headline, dense and insecure runs (the budget); ``--full`` runs every
    variant for 50."""
    if full:
        return run_sweep("fl_digits", SPEC, target=0.93)
    return run_sweep("fl_digits", replace(SPEC, rounds=15), target=0.93, sweep=False)
