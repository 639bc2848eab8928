"""Benchmark ``byzantine``: the robust strategies and the anomaly detector against attackers.

Each run is a population (tinyfed/population.py: in-process devices against the gateway's real rounds, admission,
store, strategies and detector, on a fake clock), a share of whose devices attack:

- ``sign_flip``: the device sends its honest update negated;
- ``scale``: its honest update scaled to just under the norm bound (95% of ``[rounds] norm_bound``);
- ``noise``: Gaussian values at its update's coordinates, at the same norm as ``scale``;
- ``label_flip``: it trains honestly on its data with every label y turned into C - 1 - y;
- ``backdoor``: it trains on its data plus a copy of every sample carrying a trigger (the first features set to
  the data's maximum) labelled with the target class 0; backdoor success is the share of the test samples of
  other classes that the final model puts in class 0 once the trigger is added.

Attackers are the first devices by name (the data split is random, so they hold no particular share). The norm
bound is 5x the median honest update norm of the first round (about 1; honest norms grow to 2.6 by round 20),
fixed here (NORM_BOUND): a gateway must have one for the scaling attack to mean anything.
Figures: ``{data}_{strategy}_{attack}_{pct}_accuracy``, and
for the backdoor ``..._backdoor``; for the detector, ``..._tpr`` (the share of attackers it quarantined: what the
gateway does about a device) and ``..._fpr`` (the share of honest devices it quarantined), and per update
``..._update_tpr`` / ``..._update_fpr`` (attackers' / honest devices' updates flagged); the summary
``{data}_best_20`` figures are the worst case over the attacks at 20% attackers of the best configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, results_dir, write_result
from edge_runtime import wire
from edge_runtime.data import partition
from edge_runtime.data.dataset import Dataset
from edge_runtime.data.sources import load_source
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from tinyfed.population import PopulationResult, PopulationSpec, SimulatedDevice, run_population
from tinyfed.simulation import score

ATTACKS = ("sign_flip", "scale", "noise", "label_flip", "backdoor")
TARGET = 0  # the backdoor's class
TRIGGER_SHARE = 0.05  # of the features the trigger sets
NORM_BOUND = {"digits": 5.0, "har": 5.0}  # 5x the first round's median honest norm (about 1), 2x the last's
# the per-round scores, each device's history against the federation's (on by default), reliability weights,
# and every counted update clipped to the round's median norm
DETECT: dict[str, Any] = {"detect": True, "reliability_weights": True, "clip_to_median": 1.0}
STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fedavg": ({"name": "fedavg"}, {}),
    "fedavgm": ({"name": "fedavgm", "momentum": 0.5}, {}),
    "median": ({"name": "fedmedian"}, {}),
    "trimmed": ({"name": "fedtrimmedavg", "beta": 0.2}, {}),
    "krum": ({"name": "krum", "byzantine": 3}, {}),
    "multikrum": ({"name": "multikrum", "byzantine": 3, "keep": 10}, {}),
    "detector": ({"name": "fedavgm", "momentum": 0.5}, DETECT),
    # and the loss-change and dormant-share scores on 300 training samples the hub keeps (digits only: HAR trains
    # its last layer only, and the gateway runs no interpreter for the frozen backbone)
    "detector_val": ({"name": "fedavgm", "momentum": 0.5}, {**DETECT, "validation": "hub"}),
}
HUB_SAMPLES = 300
# Bumped whenever the detector's code changes what it flags: a resumed ``--full`` grid re-runs every run of a
# strategy with a [robustness] table from an older revision, and keeps the others' (their code did not change).
DETECTOR_REVISION = 2  # 2: the dormant share, and the loss change at a tenth of the update
DIGITS = PopulationSpec(data="digits", devices=30, alpha=0.5, rounds=20, epochs=5, learning_rate=0.05, batch_size=32,
                        density=0.01, fraction=1.0, score_every=1000)  # fmt: skip
HAR = PopulationSpec(data="har", natural=True, rounds=20, epochs=2, learning_rate=0.05, batch_size=32, density=0.01,
                     fraction=1.0, trainable_layers=1, score_every=1000)  # fmt: skip


def trigger(x: np.ndarray, high: float) -> np.ndarray:
    out = np.array(x, np.float32, copy=True)
    flat = out.reshape(len(out), -1)
    flat[:, : max(1, int(TRIGGER_SHARE * flat.shape[1]))] = high
    return out


@dataclass
class Attack:
    kind: str
    bound: float
    high: float  # the data's maximum, for the trigger
    seed: int = 0


class Attacker(SimulatedDevice):
    """A device that answers its tasks with an attack: its data changed once, or each update changed as sent."""

    def __init__(self, name: str, data: Dataset, seed: int, attack: Attack) -> None:
        if attack.kind == "label_flip":
            data = replace(data, y=(len(data.classes) - 1 - data.y).astype(data.y.dtype))
        elif attack.kind == "backdoor":
            x = np.concatenate([data.x, trigger(data.x, attack.high)])
            y = np.concatenate([data.y, np.full(len(data.y), TARGET, data.y.dtype)])
            data = replace(data, x=x, y=y, groups=None)
        super().__init__(name, data, seed)
        self.attack = attack
        self.rng = np.random.default_rng(seed)

    def answer(self, task: wire.Task, graph: Graph, spec: dict[int, int], layers: int, backend: Any) -> bytes:
        raw = super().answer(task, graph, spec, layers, backend)
        kind = self.attack.kind
        if kind not in ("sign_flip", "scale", "noise"):
            return raw
        update = wire.decode(raw, expect=wire.Update, spec=spec)
        values = [t.values.decode().astype(np.float64) for t in update.tensors]
        if kind == "sign_flip":
            values = [-v for v in values]
        elif kind == "noise":
            values = [self.rng.standard_normal(v.size) for v in values]
        norm = math.sqrt(sum(float(v @ v) for v in values))
        if kind != "sign_flip" and norm > 0:
            values = [v * (0.95 * self.attack.bound / norm) for v in values]
        tensors = [wire.TensorUpdate(t.tensor, t.numel, t.indices,
                                     wire.CodedValues(wire.ValueCoding.FLOAT32, v.astype(np.float32), 1.0))
                   for t, v in zip(update.tensors, values, strict=True)]  # fmt: skip
        return wire.encode(replace(update, tensors=tensors))


def run_one(spec: PopulationSpec, strategy: str, attack: str, share: float) -> dict[str, Any]:
    params, robustness = STRATEGIES[strategy]
    spec = replace(spec, strategy=dict(params), robustness=dict(robustness), norm_bound=NORM_BOUND[spec.data])
    split = load_source(spec.data, seed=spec.seed)
    high = float(split.train.x.max())
    # The population names its devices sim-<share key>: HAR's keys are its subjects' ids, digits' 0..29.
    keys = sorted(partition.natural(split.train)) if spec.natural else list(range(spec.devices))
    attackers = {f"sim-{i:05d}" for i in keys[: round(share * len(keys))]} if attack != "none" else set()

    def make_device(name: str, data: Dataset, seed: int) -> SimulatedDevice:
        if name in attackers:
            return Attacker(name, data, seed, Attack(attack, NORM_BOUND[spec.data], high, seed))
        return SimulatedDevice(name, data, seed)

    started, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        if spec.robustness.get("validation") == "hub":
            hub = np.random.default_rng(spec.seed).permutation(len(split.train))[:HUB_SAMPLES]
            np.savez(Path(tmp) / "hub.npz", x=split.train.x[hub], y=split.train.y[hub])
            spec = replace(spec, robustness={**spec.robustness, "validation": str(Path(tmp) / "hub.npz")})
        result = run_population(spec, make_device=make_device)
    # CPU seconds too: on a shared machine the wall time is mostly the others' load
    out: dict[str, Any] = {"accuracy": result.rounds[-1].score, "seconds": time.perf_counter() - started,
                           "cpu_seconds": time.process_time() - cpu, "attackers": sorted(attackers)}  # fmt: skip
    if attack == "backdoor":
        out["backdoor"] = backdoor_success(result, split.test, high)
    out |= detection(result, attackers)
    return out


def backdoor_success(result: PopulationResult, test: Dataset, high: float) -> float:
    others = test.y != TARGET
    poisoned = Dataset(trigger(test.x[others], high), np.full(int(others.sum()), TARGET, test.y.dtype), test.classes)
    return score(default_backend(), result.final_model, poisoned, "accuracy")


def detection(result: PopulationResult, attackers: set[str]) -> dict[str, Any]:
    flags: dict[str, int] = {}
    krum: dict[str, int] = {}
    devices: set[str] = set()
    for _, c in result.contributions:
        devices.add(c.device)
        flags[c.device] = flags.get(c.device, 0) + int(c.flagged)
        if c.chosen:
            krum[c.device] = krum.get(c.device, 0) + 1
    out: dict[str, Any] = {"quarantined": sorted(result.quarantined)}
    if krum:
        out["krum_chosen"] = krum
        out["krum_attackers_chosen"] = sum(n for d, n in krum.items() if d in attackers) / max(1, sum(krum.values()))
    if not any(c.norm is not None for _, c in result.contributions):
        return out
    caught = set(result.quarantined)
    honest = devices - attackers
    out["tpr"] = len(caught & attackers) / len(attackers) if attackers else float("nan")
    out["fpr"] = len(caught & honest) / len(honest) if honest else float("nan")
    scored = [(c.device in attackers, c.flagged) for _, c in result.contributions if c.norm is not None]
    bad = [f for a, f in scored if a]
    good = [f for a, f in scored if not a]
    out["update_tpr"] = sum(bad) / len(bad) if bad else float("nan")
    out["update_fpr"] = sum(good) / len(good) if good else float("nan")
    out["flags"] = flags
    return out


def _job(args: tuple[str, PopulationSpec, str, str, float]) -> tuple[str, str, str, float, dict[str, Any]]:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    name, spec, strategy, attack, share = args
    return name, strategy, attack, share, run_one(spec, strategy, attack, share)


def grid(full: bool, every_strategy: bool = False) -> list[tuple[str, PopulationSpec, str, str, float]]:
    """The suite (about 2 minutes on 2 idle cores): 0% and 20% attackers, every attack; on digits fedavg,
    Multi-Krum and the detector with and without the hub's validation set, on HAR the detector.
    ``--every-strategy`` adds the others at 20%; ``--full``: 10, 20 and 30% on both data sets, every strategy
    (about 30 minutes)."""
    jobs: list[tuple[str, PopulationSpec, str, str, float]] = []
    for name, spec in (("digits", DIGITS), ("har", HAR)):
        strategies = list(STRATEGIES) if full or every_strategy else (
            ["fedavg", "multikrum", "detector", "detector_val"] if name == "digits" else ["detector"]
        )  # fmt: skip
        if spec.trainable_layers:  # the loss-change score needs the whole model trainable (validation.py)
            strategies = [s for s in strategies if s != "detector_val"]
        shares = (0.1, 0.2, 0.3) if full else (0.2,)
        for strategy in strategies:
            jobs.append((name, spec, strategy, "none", 0.0))
            jobs += [(name, spec, strategy, attack, share) for share in shares for attack in ATTACKS]
    if not (full or every_strategy):
        return jobs
    # The suite's own runs first (byzantine.json is written from them as soon as they are done), then the
    # configurations the goal is about: a long grid stopped early still has them (partial results are written
    # after every run).
    # After the suite: each data set's fullest detector (detector_val where the hub's set can score, else the
    # detector) at 30% then 10%, then the plain detector on digits, then the other strategies.
    suite = {(j[0], j[2], j[3], j[4]) for j in grid(False)}
    first = ("detector", "fedavg", "detector_val", "multikrum", "fedavgm", "trimmed", "median", "krum")
    fullest = {"digits": "detector_val", "har": "detector"}

    def order(j: tuple[str, PopulationSpec, str, str, float]) -> tuple[bool, int, int, int]:
        tier = 0 if j[2] == fullest[j[0]] else 1 if j[2] in ("detector", "detector_val") else 2
        return (j[0], j[2], j[3], j[4]) not in suite, tier, [0.0, 0.2, 0.3, 0.1].index(j[4]), first.index(j[2])

    return sorted(jobs, key=order)


def main(full: bool = False, workers: int = 2, every_strategy: bool = False) -> dict[str, float]:
    """Run the grid; ``--full`` and ``--every-strategy`` write byzantine-full / byzantine-every-strategy (not the
    suite's byzantine.json), each run's result as it comes (``complete`` false until the last)."""
    from multiprocessing import get_context

    logging.basicConfig(level=logging.ERROR)
    name = "byzantine-full" if full else "byzantine-every-strategy" if every_strategy else "byzantine"
    jobs = grid(full, every_strategy)
    total = len(jobs)
    runs: list[dict[str, Any]] = reusable(results_dir() / f"{name}.json", jobs) if name != "byzantine" else []
    done = {(r["data"], r["strategy"], r["attack"], r["share"]) for r in runs}
    jobs = [j for j in jobs if (j[0], j[2], j[3], j[4]) not in done]
    if runs:
        print(f"  resuming {name}: {len(runs)} runs kept from {results_dir() / f'{name}.json'}, {len(jobs)} to run")
    suite = {(j[0], j[2], j[3], j[4]) for j in jobs if (j[0], j[2], j[3], j[4]) in
             {(g[0], g[2], g[3], g[4]) for g in grid(False)}} if name != "byzantine" else set()  # fmt: skip
    started = time.perf_counter()
    with single_blas_thread():
        pool = get_context("spawn").Pool(workers)  # its workers start here, and read the environment as they do
    with pool:
        for data, strategy, attack, share, out in pool.imap_unordered(_job, jobs):
            runs.append({"data": data, "strategy": strategy, "attack": attack, "share": share, **out})
            if suite:
                suite.discard((data, strategy, attack, share))
                if not suite:  # the suite's grid is done: its byzantine.json, as `tinyfed bench byzantine` writes
                    mine = [r for r in runs if (r["data"], r["strategy"], r["attack"], r["share"]) in
                            {(j[0], j[2], j[3], j[4]) for j in grid(False)}]  # fmt: skip
                    save("byzantine", mine, len(mine), time.perf_counter() - started,
                         plot(mine, results_dir() / "byzantine.png"))  # fmt: skip
            extra = "".join(f", {k} {out[k]:.3f}" for k in ("backdoor", "tpr", "fpr") if k in out)
            print(f"  {data:<6} {strategy:<9} {attack:<10} {share:>4.0%}: accuracy {out['accuracy']:.4f}{extra}"
                  f" ({out['seconds']:.0f} s)", flush=True)  # fmt: skip
            if len(runs) < total:
                save(name, runs, total, time.perf_counter() - started, None)
    picture = plot(runs, results_dir() / f"{name}.png")
    figures, path = save(name, runs, total, time.perf_counter() - started, picture)
    print_table(name, figures)
    print(table(runs))
    print("\nThe goal (a row is met within 2 points of its attack-free run, TPR >= 0.9, FPR <= 0.05):")
    print(goal(runs))
    print(f"wrote {path}" + (f" and {picture}" if picture else ""))
    return figures


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """One BLAS thread in processes started inside (a worker per core already), the environment restored after
    (the suite's later benchmarks keep theirs): OpenBLAS's own threads on these small matrices made the
    validation set's forward passes 10x slower on a loaded machine (0.27 s against 0.027 s CPU per close of a
    digits round); a spawned worker reads it as it imports numpy."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    before = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.setdefault(n, "1")
    try:
        yield
    finally:
        for n, value in before.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def _plain(value: Any) -> Any:
    """As it reads back from the results' JSON (tuples as lists), to compare a saved configuration with ours."""
    return json.loads(json.dumps(value, default=float))


def _specs() -> dict[str, Any]:
    return {k: {**vars(v), "canaries": None} for k, v in (("digits", DIGITS), ("har", HAR))}


def reusable(path: Path, jobs: list[tuple[str, PopulationSpec, str, str, float]]) -> list[dict[str, Any]]:
    """The runs of an earlier, unfinished grid that still hold: same data specs and norm bound, same strategy
    settings, and for a strategy with a [robustness] table the same DETECTOR_REVISION (the detector's code)."""
    try:
        payload = json.loads(path.read_text())
        old, when = payload["details"], str(payload.get("when", "earlier"))
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if old.get("specs") != _plain(_specs()) or old.get("norm_bound") != _plain(NORM_BOUND):
        return []
    wanted = {(j[0], j[2], j[3], j[4]) for j in jobs}
    saved = old.get("strategies", {})
    kept = []
    for r in old.get("runs", []):
        strategy = r.get("strategy")
        if strategy not in STRATEGIES or saved.get(strategy) != _plain(STRATEGIES[strategy]):
            continue
        if STRATEGIES[strategy][1] and (old.get("detector_revision") != DETECTOR_REVISION
                                        or old.get("hub_samples") != HUB_SAMPLES):  # fmt: skip
            continue
        if (r["data"], strategy, r["attack"], r["share"]) in wanted:
            kept.append({**r, "kept": r.get("kept") or when})  # kept from the grid saved then, not run again
    return kept


def save(name: str, runs: list[dict[str, Any]], jobs: int, seconds: float, picture: Path | None
         ) -> tuple[dict[str, float], Path]:  # fmt: skip
    figures = summarise(runs)
    figures["seconds"] = seconds
    figures["runs"] = float(len(runs))
    path = write_result(name, figures, {"runs": runs, "jobs": jobs, "complete": len(runs) == jobs,
                                        "specs": _specs(), "strategies": STRATEGIES, "norm_bound": NORM_BOUND,
                                        "detector_revision": DETECTOR_REVISION, "hub_samples": HUB_SAMPLES,
                                        "plot": picture.name if picture else None})  # fmt: skip
    return figures, path


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for r in runs:
        key = f"{r['data']}_{r['strategy']}_{r['attack']}_{round(100 * r['share'])}"
        figures[f"{key}_accuracy"] = r["accuracy"]
        for k in ("backdoor", "tpr", "fpr", "update_tpr", "update_fpr"):
            if k in r and not (isinstance(r[k], float) and math.isnan(r[k])):
                figures[f"{key}_{k}"] = float(r[k])
    for data in sorted({r["data"] for r in runs}):
        clean = {r["strategy"]: r["accuracy"] for r in runs if r["data"] == data and r["attack"] == "none"}
        if "fedavg" in clean:
            figures[f"{data}_clean_accuracy"] = clean["fedavg"]
        for share in sorted({r["share"] for r in runs if r["data"] == data and r["share"] > 0}):
            pct = round(100 * share)
            worst: dict[str, float] = {}  # per strategy, its lowest accuracy over the attacks at this share
            for r in runs:
                if r["data"] == data and abs(r["share"] - share) < 1e-9:
                    worst[r["strategy"]] = min(worst.get(r["strategy"], 1.0), r["accuracy"])
            if worst:
                best = max(worst, key=lambda s: worst[s])
                figures[f"{data}_best_{pct}_worst_accuracy"] = worst[best]
                figures[f"{data}_best_{pct}_is_{best}"] = 1.0
                # within 2 points of the attack-free accuracy: of the same configuration, and of plain FedAvg
                figures[f"{data}_best_{pct}_drop_points"] = 100 * (clean.get(best, math.nan) - worst[best])
                fedavg = clean.get("fedavg", math.nan)
                figures[f"{data}_best_{pct}_drop_vs_fedavg_points"] = 100 * (fedavg - worst[best])
            for strategy in ("detector", "detector_val"):
                detector = [r for r in runs if r["data"] == data and r["strategy"] == strategy
                            and r["attack"] != "none" and abs(r["share"] - share) < 1e-9]  # fmt: skip
                if detector:
                    figures[f"{data}_{strategy}_{pct}_min_tpr"] = min(r.get("tpr", 0.0) for r in detector)
                    figures[f"{data}_{strategy}_{pct}_max_fpr"] = max(r.get("fpr", 0.0) for r in detector)
                    figures[f"{data}_{strategy}_{pct}_drop_points"] = 100 * (
                        clean.get(strategy, math.nan) - min(r["accuracy"] for r in detector))
    return figures


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table: accuracy (backdoor success) per strategy and attack, and the detector's TPR/FPR."""
    lines = []
    for data in sorted({r["data"] for r in runs}):
        for share in sorted({r["share"] for r in runs if r["data"] == data and r["share"] > 0}):
            lines += [f"\n{data}, {share:.0%} attackers: final accuracy (backdoor success)",
                      "| strategy | none | " + " | ".join(ATTACKS) + " |", "|---|" + "---|" * (len(ATTACKS) + 1)]
            for strategy in STRATEGIES:
                cells = []
                for attack in ("none", *ATTACKS):
                    found = [r for r in runs if r["data"] == data and r["strategy"] == strategy
                             and r["attack"] == attack and (attack == "none" or r["share"] == share)]  # fmt: skip
                    if not found:
                        cells.append("")
                        continue
                    r = found[0]
                    cell = f"{r['accuracy']:.3f}"
                    if "backdoor" in r:
                        cell += f" ({r['backdoor']:.2f})"
                    if "tpr" in r and attack != "none":
                        cell += f" TPR {r['tpr']:.2f} FPR {r['fpr']:.2f}"
                    elif "fpr" in r:
                        cell += f" FPR {r['fpr']:.2f}"
                    cells.append(cell)
                if any(cells):
                    lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal(runs: list[dict[str, Any]]) -> str:
    """The issue's goal per data set and share, for each detector configuration: worst accuracy over the attacks
    against its own attack-free run (met within 2 points), the lowest share of attackers quarantined (>= 90%),
    the highest share of honest devices quarantined (<= 5%), and the backdoor's success."""
    lines = ["| data | share | configuration | attack-free | worst (attack) | drop, points | min TPR | max FPR | "
             "backdoor success | met |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for data in sorted({r["data"] for r in runs}):
        for share in sorted({r["share"] for r in runs if r["data"] == data and r["share"] > 0}):
            for strategy in ("detector", "detector_val"):
                clean = [r for r in runs if (r["data"], r["strategy"], r["attack"]) == (data, strategy, "none")]
                under = [r for r in runs if r["data"] == data and r["strategy"] == strategy
                         and r["attack"] != "none" and abs(r["share"] - share) < 1e-9]  # fmt: skip
                if not clean or not under:
                    continue
                worst = min(under, key=lambda r: r["accuracy"])
                drop = 100 * (clean[0]["accuracy"] - worst["accuracy"])
                tpr = min(r.get("tpr", 0.0) for r in under)
                fpr = max(r.get("fpr", 0.0) for r in under)
                backdoor = next((r["backdoor"] for r in under if "backdoor" in r), math.nan)
                met = drop <= 2 and tpr >= 0.9 and fpr <= 0.05
                shown = f"{len(under)} of {len(ATTACKS)} attacks" if len(under) < len(ATTACKS) else ""
                lines.append(f"| {data} | {share:.0%} | {strategy} | {clean[0]['accuracy']:.3f} | "
                             f"{worst['accuracy']:.3f} ({worst['attack']}) | {drop:.1f} | {tpr:.2f} | {fpr:.3f} | "
                             f"{backdoor:.2f} | {'yes' if met else 'no'}{', ' + shown if shown else ''} |")  # fmt: skip
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed (pip install 'tinyfed[bench]'); {path} not drawn")
        return None
    datasets = sorted({r["data"] for r in runs})
    shares = sorted({r["share"] for r in runs if r["share"] > 0}) or [0.2]
    fig, axes = plt.subplots(len(shares), len(datasets), figsize=(7 * len(datasets), 4.5 * len(shares)), dpi=110,
                             squeeze=False)  # fmt: skip
    for row, share in zip(axes, shares, strict=True):
        for ax, data in zip(row, datasets, strict=True):
            strategies = [s for s in STRATEGIES if any(r["strategy"] == s and r["data"] == data for r in runs)]
            attacks = ("none", *ATTACKS)
            width = 0.8 / max(1, len(strategies))
            for i, strategy in enumerate(strategies):
                ys = []
                for attack in attacks:
                    found = [r["accuracy"] for r in runs if r["data"] == data and r["strategy"] == strategy and
                             r["attack"] == attack and (attack == "none" or abs(r["share"] - share) < 1e-9)
                             ]  # fmt: skip
                    ys.append(found[0] if found else 0.0)
                ax.bar(np.arange(len(attacks)) + i * width, ys, width, label=strategy)
            ax.set_xticks(np.arange(len(attacks)) + 0.4 - width / 2, attacks, rotation=20)
            ax.set_ylabel("final int8 test accuracy")
            ax.set_title(f"{data}: {share:.0%} attackers")
            ax.set_ylim(0, 1)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10, 20 and 30%% attackers, every strategy")
    parser.add_argument("--every-strategy", action="store_true", help="the suite's grid with every strategy")
    parser.add_argument("--show", metavar="NAME", help="print the tables of bench/results/NAME.json, run nothing")
    args = parser.parse_args()
    if args.show:
        saved = json.loads((results_dir() / f"{args.show}.json").read_text())
        shown = saved["details"]["runs"]
        print(f"{args.show}: {len(shown)} of {saved['details']['jobs']} runs, saved {saved['when']}")
        print(table(shown))
        print("\nThe goal (a row is met within 2 points of its attack-free run, TPR >= 0.9, FPR <= 0.05):")
        print(goal(shown))
    else:
        main(args.full, every_strategy=args.every_strategy)
