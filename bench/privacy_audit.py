"""Benchmark ``privacy_audit``: the epsilon an attack can prove, against the epsilon the accountant claims.

One-run auditing (Steinke, Nasr and Jagielski 2023; tinyfed/audit.py): 300 canaries (test-split digits with a
random wrong label) each go into one device's data with probability 1/2; after the federation, the auditor
scores each canary by how much more probable the published final model makes its label than the initial model
did, guesses "in" for the 20 highest and "out" for the 20 lowest (40 guesses, fixed before any run), and the
number right gives a lower bound on epsilon at 95% confidence. Without DP the bound should be well above zero;
with DP it must stay below the accountant's epsilon (a bound above it would be a bug in the mechanism or the
accounting).

Two federations (tinyfed/population.py: the gateway's real rounds, noise and ledger; devices in-process):

- ``small``: 20 devices, every one asked every round (q = 1), 5 local epochs: the canary device is in every
  round, the setting most favourable to the attack; with DP at epsilon 8 (no sampling to amplify it, so the
  noise is large);
- ``population``: the ``fl_privacy`` federation, 1,000 devices, q = 0.1, at epsilon 1, 2, 4 and 8 (``--full``;
  the suite leaves it out: the small federation at epsilon 8 and without DP, 20 rounds).

Figures: ``{federation}_bound_no_dp``, ``{federation}_bound_eps_{e}`` and ``{federation}_accountant_eps_{e}``
(what was spent when the run stopped), and the guesses right for each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from bench.common import print_table, write_result
from bench.fl_privacy import DIGITS, PRIVACY, calibrate
from tinyfed.audit import AuditResult, audit
from tinyfed.population import Canaries, PopulationSpec, run_population

GUESSES = 40
CANARIES = Canaries(count=300, device=0, seed=1)
SMALL = PopulationSpec(data="digits", devices=20, rounds=50, fraction=1.0, epochs=5, learning_rate=0.05, density=0.5,
                       strategy={"name": "fedavg"}, canaries=CANARIES)  # fmt: skip
POPULATION = replace(DIGITS, rounds=60, canaries=CANARIES)


def run(name: str, spec: PopulationSpec, epsilon: float | None) -> tuple[AuditResult, dict[str, Any]]:
    privacy: dict[str, Any] = {}
    z = 0.0
    if epsilon is not None:
        delta = 1.0 / spec.devices
        q = 1.0 if spec.fraction == 1.0 else PRIVACY["sampling_rate"]
        z = calibrate(epsilon, spec.rounds, q, delta)
        privacy = {**PRIVACY, "sampling_rate": q, "epsilon": epsilon, "delta": delta, "noise_multiplier": z}
        if q == 1.0:
            privacy |= {"adaptive_clip": False, "clip": 0.1}
    started = time.perf_counter()
    result = run_population(replace(spec, privacy=privacy))
    found = audit(result, GUESSES)
    label = "no DP" if epsilon is None else f"epsilon {epsilon:g} (z {z:g})"
    print(f"{name} {label}: {found.correct}/{found.guesses} guesses right, epsilon lower bound "
          f"{found.epsilon_lower_bound:.3f}, accountant {found.accountant_epsilon:.3f}, accuracy "
          f"{result.rounds[-1].score:.4f}, {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    return found, {"noise_multiplier": z, "epsilon": epsilon, "accuracy": result.rounds[-1].score,
                   "rounds": len(result.rounds), "canaries_in": int(result.canary_in.sum())  # type: ignore[union-attr]
                   if result.canary_in is not None else 0, **vars(found)}  # fmt: skip


def main(full: bool = False) -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)
    plan: list[tuple[str, PopulationSpec, tuple[float | None, ...]]] = [
        ("small", SMALL if full else replace(SMALL, rounds=20), (None, 8.0)),
    ]
    if full:  # the 1,000-device population: --full only (the suite's 15 minutes)
        plan.append(("population", POPULATION, (None, 1.0, 2.0, 4.0, 8.0)))
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name, spec, epsilons in plan:
        for epsilon in epsilons:
            found, detail = run(name, spec, epsilon)
            label = "no_dp" if epsilon is None else f"eps_{epsilon:g}"
            figures[f"{name}_bound_{label}"] = found.epsilon_lower_bound
            figures[f"{name}_correct_{label}"] = float(found.correct)
            if epsilon is not None:
                figures[f"{name}_accountant_{label}"] = found.accountant_epsilon
            details[f"{name} {label}"] = detail
    figures["guesses"] = float(GUESSES)
    specs = {name: {k: v for k, v in vars(spec).items() if k != "canaries"} for name, spec, _ in plan}
    path = write_result("privacy_audit", figures, {"runs": details, "specs": specs, "canaries": vars(CANARIES),
                                                   "confidence": 0.95})  # fmt: skip
    print_table("privacy_audit", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
