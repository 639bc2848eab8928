"""Benchmark ``fl_privacy``: accuracy against epsilon under central DP, over 1,000 simulated devices.

Device-level DP needs a population: with 20 devices, the noise that hides any one of them drowns the model. So
each data set's training split is cut into 1,000 devices (IID; digits: 1.4 samples each, HAR: 7.4 windows
each, its 21 subjects cut finer), and the population runs in-process against the gateway's real rounds,
store, ledger and accountant (tinyfed/population.py says what is real and what is left out: the transport).

Every run: Poisson sampling with q = 0.1 (100 devices expected per round), compression on (10% of entries,
int8 values, error feedback, the clip applied to delta plus residual before compression), FedAvg (server
learning rate 1: server momentum adds up the noise of ten rounds, and with adaptive clipping it made the
epsilon-2 run collapse after 10 rounds, 0.58 to 0.12; plain FedAvg reached 0.875 in the same 100 rounds), adaptive
clipping (Andrew et al. 2021: initial clip 0.5, towards the median norm), delta = 1/N.
For each target epsilon the noise multiplier is the smallest that keeps the configured rounds within it
(dp-accounting's RDP accountant), and the gateway's budget is that epsilon: it stops there. The non-DP run
asks the same share of devices (fraction 0.1), weighs them by samples and neither clips nor noises.

Figures per data set: ``{data}_accuracy_eps_{e}`` (the final int8 model's test accuracy), ``{data}_noise_eps_{e}``,
``{data}_epsilon_spent_eps_{e}``, ``{data}_accuracy_no_dp``, ``rounds``. The PNG plots accuracy against rounds per
epsilon and final accuracy against epsilon. The suite runs digits for 30 rounds at epsilon 8 and without DP
(about a minute); ``--full`` runs digits for 100 rounds and HAR for 60, at epsilon 1, 2, 4 and 8 and without.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import print_table, results_dir, write_result
from gateway.privacy.accountant import Accountant
from tinyfed.population import PopulationResult, PopulationRound, PopulationSpec, run_population

DEVICES = 1000
SAMPLING_RATE = 0.1
DIGITS = PopulationSpec(data="digits", devices=DEVICES, rounds=100, epochs=1, learning_rate=0.1, batch_size=16,
                        density=0.1, fraction=SAMPLING_RATE, strategy={"name": "fedavg"})  # fmt: skip
HAR = PopulationSpec(data="har", devices=DEVICES, rounds=60, epochs=2, learning_rate=0.05, batch_size=16, density=0.1,
                     fraction=SAMPLING_RATE, strategy={"name": "fedavg"}, trainable_layers=2,
                     score_every=5)  # fmt: skip
PRIVACY: dict[str, Any] = {"mode": "central-dp", "sampling_rate": SAMPLING_RATE, "clip": 0.5, "adaptive_clip": True,
                           "target_quantile": 0.5, "clip_learning_rate": 0.2, "accountant": "rdp"}  # fmt: skip


def calibrate(epsilon: float, rounds: int, sampling_rate: float, delta: float) -> float:
    """The smallest noise multiplier (to 3 significant digits) whose ``rounds`` rounds stay within ``epsilon``."""
    accountant = Accountant("rdp", delta)

    def spent(z: float) -> float:
        return accountant.epsilon(Counter({("central-dp", sampling_rate, z): rounds}))

    low, high = 0.3, 64.0
    if spent(high) > epsilon:
        raise ValueError(f"epsilon {epsilon} is out of reach in {rounds} rounds at q {sampling_rate}")
    while high / low > 1.001:
        mid = math.sqrt(low * high)
        low, high = (low, mid) if spent(mid) <= epsilon else (mid, high)
    return float(f"{high:.3g}") if spent(float(f"{high:.3g}")) <= epsilon else high


def _rows(result: PopulationResult) -> list[dict[str, float]]:
    return [{"round": r.round, "score": r.score, "participants": r.participants, "epsilon": r.epsilon, "clip": r.clip}
            for r in result.rounds]  # fmt: skip


def run_data(name: str, spec: PopulationSpec, epsilons: tuple[float, ...]) -> tuple[dict[str, float], dict[str, Any]]:
    delta = 1.0 / spec.devices
    figures: dict[str, float] = {}
    runs: dict[str, Any] = {}
    variants: list[tuple[str, float | None]] = [(f"eps_{e:g}", e) for e in epsilons] + [("no_dp", None)]
    for label, epsilon in variants:
        privacy: dict[str, Any] = {}
        z = 0.0
        if epsilon is not None:
            z = calibrate(epsilon, spec.rounds, SAMPLING_RATE, delta)
            privacy = {**PRIVACY, "epsilon": epsilon, "delta": delta, "noise_multiplier": z}
        started = time.perf_counter()

        def show(r: PopulationRound, label: str = label) -> None:
            if not math.isnan(r.score):
                print(f"  {name} {label:<7} round {r.round:>3}: accuracy {r.score:.4f}, epsilon {r.epsilon:.3f}, "
                      f"{r.participants} updates, clip {r.clip:.3g}", flush=True)  # fmt: skip

        result = run_population(replace(spec, privacy=privacy), on_round=show)
        seconds = time.perf_counter() - started
        figures[f"{name}_accuracy_{label}"] = result.rounds[-1].score
        if epsilon is not None:
            figures[f"{name}_noise_{label}"] = z
            figures[f"{name}_epsilon_spent_{label}"] = result.epsilon
        runs[label] = {"noise_multiplier": z, "epsilon": epsilon, "epsilon_spent": result.epsilon, "delta": delta,
                       "rounds": len(result.rounds), "stopped_by_budget": result.stopped_by_budget,
                       "seconds": seconds, "rows": _rows(result)}  # fmt: skip
        print(f"{name} {label}: accuracy {result.rounds[-1].score:.4f} after {len(result.rounds)} rounds, "
              f"noise multiplier {z:g}, epsilon spent {result.epsilon:.3f} (delta {delta:g}), {seconds:.0f} s",
              flush=True)  # fmt: skip
    figures[f"{name}_rounds"] = float(spec.rounds)
    return figures, runs


def plot(details: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed (pip install 'tinyfed[bench]'); {path} not drawn")
        return None
    datasets = list(details)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), dpi=110, squeeze=False)
    for row, name in enumerate(datasets):
        runs = details[name]
        left, right = axes[row]
        for label, run in runs.items():
            points = [(r["round"], r["score"]) for r in run["rows"] if not math.isnan(r["score"])]
            shown = "no DP" if label == "no_dp" else f"epsilon {run['epsilon']:g} (z {run['noise_multiplier']:g})"
            left.plot(*zip(*points, strict=True), marker="o", markersize=2, linewidth=1.3, label=shown)
        left.set_xlabel("round")
        left.set_ylabel("int8 test accuracy")
        left.set_title(f"{name}: {DEVICES} devices, q {SAMPLING_RATE}, delta 1/{DEVICES}")
        left.grid(True, alpha=0.3)
        left.legend(fontsize=8, loc="lower right")
        dp = [(run["epsilon"], run["rows"][-1]["score"]) for run in runs.values() if run["epsilon"] is not None]
        right.plot(*zip(*sorted(dp), strict=True), marker="o", label="central DP")
        if "no_dp" in runs:
            right.axhline(runs["no_dp"]["rows"][-1]["score"], color="grey", linestyle="--", label="no DP")
        right.set_xscale("log", base=2)
        right.set_xlabel("epsilon (device level)")
        right.set_ylabel("final int8 test accuracy")
        right.set_title(f"{name}: accuracy against epsilon")
        right.grid(True, alpha=0.3)
        right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(full: bool = False) -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)
    plan = [("digits", DIGITS, (1.0, 2.0, 4.0, 8.0)), ("har", HAR, (1.0, 2.0, 4.0, 8.0))] if full else [
        ("digits", replace(DIGITS, rounds=30), (8.0,))
    ]  # fmt: skip
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name, spec, epsilons in plan:
        found, runs = run_data(name, spec, epsilons)
        figures |= found
        details[name] = runs
    picture = plot(details, results_dir() / "fl_privacy.png")
    settings = {name: {k: v for k, v in vars(spec).items() if k != "canaries"} for name, spec, _ in plan}
    path = write_result("fl_privacy", figures, {"runs": details, "specs": settings, "privacy": PRIVACY,
                                                "plot": picture.name if picture else None})  # fmt: skip
    print_table("fl_privacy", figures)
    print(f"wrote {path}" + (f" and {picture}" if picture else ""))
    return figures


if __name__ == "__main__":
    main()
