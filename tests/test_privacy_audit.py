"""The privacy audit, small enough for CI: canaries on one device, a membership guess on the published models,
and the epsilon lower bound the guesses imply (tinyfed/audit.py), without DP and with it.

The same federation twice (20 devices of the digits set, every one asked each round, 20 rounds, 200 canaries
of which about half go into one device's data, 40 guesses fixed beforehand): without DP the model learns the
canaries it trained on and the guesses rule out a sizeable epsilon; with central DP the bound must stay below
what the accountant says was spent. ``tinyfed bench privacy_audit`` runs the larger audit (1,000 devices).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tinyfed.audit import audit, epsilon_lower_bound
from tinyfed.population import Canaries, PopulationSpec, run_population

FEDERATION: dict[str, Any] = dict(devices=20, rounds=20, fraction=1.0, epochs=5, learning_rate=0.05, density=0.5,
                                  strategy={"name": "fedavg"}, canaries=Canaries(count=200))  # fmt: skip
DP = {"mode": "central-dp", "sampling_rate": 1.0, "noise_multiplier": 4.0, "clip": 0.1, "epsilon": 20.0, "delta": 1e-3}
GUESSES = 40


def test_the_bound_follows_the_binomial_tail() -> None:
    assert epsilon_lower_bound(20, 40) == 0.0  # coin flips rule nothing out
    assert epsilon_lower_bound(40, 40) == pytest.approx(math.log(0.05 ** (1 / 40) / (1 - 0.05 ** (1 / 40))))
    assert epsilon_lower_bound(39, 40) < epsilon_lower_bound(40, 40) < epsilon_lower_bound(80, 80)


def test_without_dp_the_audit_finds_a_large_epsilon_and_with_dp_stays_below_the_accountant() -> None:
    off = audit(run_population(PopulationSpec(**FEDERATION)), GUESSES)
    assert off.accountant_epsilon == 0.0
    assert off.epsilon_lower_bound >= 1.0, off  # the canaries it trained on are told from the others
    on = audit(run_population(PopulationSpec(**FEDERATION, privacy=DP)), GUESSES)
    assert 0 < on.accountant_epsilon <= DP["epsilon"]
    assert on.epsilon_lower_bound <= on.accountant_epsilon, on
    assert on.correct < off.correct
