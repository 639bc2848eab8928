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
from collections.abc import Callable, Iterator
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
from tinyfed.population import PopulationResult, PopulationRound, PopulationSpec, SimulatedDevice, run_population
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
    # and the loss-change and dormant-share scores on 300 training samples the hub keeps (HAR too: the gateway's
    # numpy int8 executor runs HAR's frozen backbone over them once, validation.py)
    "detector_val": ({"name": "fedavgm", "momentum": 0.5}, {**DETECT, "validation": "hub"}),
}
HUB_SAMPLES = 300
# Each data set's best configuration: the goal's cells (``--seeds``) and the fullest detector first in ``--full``.
GOAL = {"digits": "detector_val", "har": "detector_val"}
GOAL_SHARE = 0.2
# Bumped whenever the detector's code changes what it flags: a resumed ``--full`` grid re-runs every run of a
# strategy with a [robustness] table from an older revision, and keeps the others' (their code did not change).
DETECTOR_REVISION = 3  # 2: the dormant share, and the loss change at a tenth of the update; 3: persistence.py
DIGITS = PopulationSpec(data="digits", devices=30, alpha=0.5, rounds=20, epochs=5, learning_rate=0.05, batch_size=32,
                        density=0.01, fraction=1.0, score_every=1000)  # fmt: skip
# HAR trains its last layer only: 390 weights (64 x 6 and 6 biases) behind the frozen convolutions. At the 1%
# density of digits' 6,570-weight MLP (66 values) that is 4 values per update, the rest held in the error-feedback
# residual and released in bursts: attack-free, the accuracy then swings by 3-8 points (standard deviation over
# rounds 11-20) and ends anywhere from 0.53 to 0.86 with the seed. At 10% (39 values, still sparse) the standard
# deviation over rounds 11-20 is about 1 point and the final accuracy 0.78-0.86 (seeds 0-6, attack-free runs
# only; docs/robustness.md).
HAR = PopulationSpec(data="har", natural=True, rounds=20, epochs=2, learning_rate=0.05, batch_size=32, density=0.1,
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


def run_one(spec: PopulationSpec, strategy: str, attack: str, share: float,
            on_round: Callable[[PopulationRound], None] | None = None) -> dict[str, Any]:  # fmt: skip
    params, robustness = STRATEGIES[strategy]
    spec = replace(spec, strategy=dict(params), robustness=dict(robustness), norm_bound=NORM_BOUND[spec.data])
    split = load_source(spec.data, seed=spec.seed)
    high = float(split.train.x.max())
    # The population names its devices sim-<share key>: HAR's keys are its subjects' ids, digits' 0..29.
    keys = sorted(partition.natural(split.train)) if spec.natural else list(range(spec.devices))
    attackers = {f"sim-{i:05d}" for i in attacker_keys(keys, share, spec.seed)} if attack != "none" else set()

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
        result = run_population(spec, on_round, make_device=make_device)
    # CPU seconds too: on a shared machine the wall time is mostly the others' load
    out: dict[str, Any] = {"accuracy": result.rounds[-1].score, "seconds": time.perf_counter() - started,
                           "cpu_seconds": time.process_time() - cpu, "attackers": sorted(attackers)}  # fmt: skip
    if attack == "backdoor":
        out["backdoor"] = backdoor_success(result, split.test, high)
    out |= detection(result, attackers)
    return out


def attacker_keys(keys: list[int], share: float, seed: int) -> list[int]:
    """Seed 0: the first devices by name (the choice every single-seed grid made, so its saved runs still hold);
    another seed draws them at random: HAR's devices are its fixed subjects, whom the seed does not reshuffle."""
    order = keys if seed == 0 else [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    return order[: round(share * len(keys))]


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


Job = tuple[str, PopulationSpec, str, str, float]  # data, its spec (with the seed), strategy, attack, share
RunKey = tuple[str, str, str, float, int]  # data, strategy, attack, share, seed
CellKey = tuple[str, str, str, float]  # data, strategy, attack, share (0 for the attack-free run)


def job_key(job: Job) -> RunKey:
    return job[0], job[2], job[3], job[4], job[1].seed


def run_key(run: dict[str, Any]) -> RunKey:
    # runs saved before seeds existed ran with seed 0
    return run["data"], run["strategy"], run["attack"], run["share"], int(run.get("seed", 0))


def _job(args: Job) -> tuple[str, str, str, float, dict[str, Any]]:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    name, spec, strategy, attack, share = args
    return name, strategy, attack, share, {"seed": spec.seed, **run_one(spec, strategy, attack, share)}


def grid(full: bool, every_strategy: bool = False) -> list[Job]:
    """The suite (about 2 minutes on 2 idle cores): 0% and 20% attackers, every attack; on digits fedavg,
    Multi-Krum and the detector with and without the hub's validation set, on HAR the detector with and without.
    ``--every-strategy`` adds the others at 20%; ``--full``: 10, 20 and 30% on both data sets, every strategy
    (about 30 minutes). One seed (0) per run."""
    jobs: list[Job] = []
    for name, spec in (("digits", DIGITS), ("har", HAR)):
        strategies = list(STRATEGIES) if full or every_strategy else (
            ["fedavg", "multikrum", "detector", "detector_val"] if name == "digits" else ["detector", "detector_val"]
        )  # fmt: skip
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
    suite = {job_key(j) for j in grid(False)}
    first = ("detector", "fedavg", "detector_val", "multikrum", "fedavgm", "trimmed", "median", "krum")

    def order(j: Job) -> tuple[bool, int, int, int]:
        tier = 0 if j[2] == GOAL[j[0]] else 1 if j[2] in ("detector", "detector_val") else 2
        return job_key(j) not in suite, tier, [0.0, 0.2, 0.3, 0.1].index(j[4]), first.index(j[2])

    return sorted(jobs, key=order)


def seed_grid(seeds: int) -> list[Job]:
    """The goal's cells over seeds 0..N-1: each data set's best configuration (GOAL) attack-free and under every
    attack at 20%. A seed changes the model's initialisation (HAR's frozen backbone with it), every device's
    training randomness, the round's sampling, the attackers (attacker_keys) and, on digits, the train/test
    split and the Dirichlet split. HAR first (a run takes seconds, a digits run a minute or more), then digits
    seed by seed: a grid stopped early has whole seeds."""
    jobs: list[Job] = []
    for name, spec in (("har", HAR), ("digits", DIGITS)):
        for seed in range(seeds):
            seeded = replace(spec, seed=seed)
            jobs.append((name, seeded, GOAL[name], "none", 0.0))
            jobs += [(name, seeded, GOAL[name], attack, GOAL_SHARE) for attack in ATTACKS]
    return jobs


def main(full: bool = False, workers: int = 2, every_strategy: bool = False, seeds: int = 0) -> dict[str, float]:
    """Run the grid; ``--full``, ``--every-strategy`` and ``--seeds N`` write byzantine-full /
    byzantine-every-strategy / byzantine-seeds (not the suite's byzantine.json), each run's result as it comes
    (``complete`` false until the last), and resume from that file."""
    from multiprocessing import get_context

    logging.basicConfig(level=logging.ERROR)
    name = ("byzantine-seeds" if seeds else "byzantine-full" if full else
            "byzantine-every-strategy" if every_strategy else "byzantine")  # fmt: skip
    jobs = seed_grid(seeds) if seeds else grid(full, every_strategy)
    total = len(jobs)
    runs: list[dict[str, Any]] = reusable(results_dir() / f"{name}.json", jobs) if name != "byzantine" else []
    done = {run_key(r) for r in runs}
    jobs = [j for j in jobs if job_key(j) not in done]
    if runs:
        print(f"  resuming {name}: {len(runs)} runs kept from {results_dir() / f'{name}.json'}, {len(jobs)} to run")
    suite_keys = {job_key(g) for g in grid(False)}
    # the suite's runs inside a --full or --every-strategy grid write byzantine.json as soon as they are done
    suite = {job_key(j) for j in jobs if job_key(j) in suite_keys} if full or every_strategy else set()
    started = time.perf_counter()
    with single_blas_thread():
        pool = get_context("spawn").Pool(workers)  # its workers start here, and read the environment as they do
    with pool:
        for data, strategy, attack, share, out in pool.imap_unordered(_job, jobs):
            runs.append({"data": data, "strategy": strategy, "attack": attack, "share": share, **out})
            if suite:
                suite.discard((data, strategy, attack, share, out["seed"]))
                if not suite:  # the suite's grid is done: its byzantine.json, as `tinyfed bench byzantine` writes
                    mine = [r for r in runs if run_key(r) in suite_keys]
                    save("byzantine", mine, len(mine), time.perf_counter() - started,
                         plot(mine, results_dir() / "byzantine.png"))  # fmt: skip
            extra = "".join(f", {k} {out[k]:.3f}" for k in ("backdoor", "tpr", "fpr") if k in out)
            print(f"  {data:<6} {strategy:<9} {attack:<10} {share:>4.0%} seed {out['seed']}: accuracy "
                  f"{out['accuracy']:.4f}{extra} ({out['seconds']:.0f} s)", flush=True)  # fmt: skip
            if len(runs) < total:
                save(name, runs, total, time.perf_counter() - started, None)
    picture = plot(runs, results_dir() / f"{name}.png")
    figures, path = save(name, runs, total, time.perf_counter() - started, picture)
    print_table(name, figures)
    print(table(runs))
    print(f"\n{GOAL_LEGEND}")
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


def reusable(path: Path, jobs: list[Job]) -> list[dict[str, Any]]:
    """The runs of an earlier, unfinished grid that still hold: same spec and norm bound for their data set (a
    change to HAR's spec re-runs HAR's runs only), same strategy settings, and for a strategy with a [robustness]
    table the same DETECTOR_REVISION (the detector's code). Code outside the detector is not versioned: after a
    change to training or aggregation, start from a fresh file."""
    try:
        payload = json.loads(path.read_text())
        old, when = payload["details"], str(payload.get("when", "earlier"))
        runs, specs, bounds, saved = old["runs"], old["specs"], old["norm_bound"], old.get("strategies", {})
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not (isinstance(runs, list) and isinstance(specs, dict) and isinstance(bounds, dict)):
        return []
    ours, our_bounds = _plain(_specs()), _plain(NORM_BOUND)
    wanted = {job_key(j) for j in jobs}
    kept = []
    for r in runs:
        strategy, data = r.get("strategy"), r.get("data")
        if specs.get(data) != ours.get(data) or bounds.get(data) != our_bounds.get(data):
            continue
        if strategy not in STRATEGIES or saved.get(strategy) != _plain(STRATEGIES[strategy]):
            continue
        if STRATEGIES[strategy][1] and (old.get("detector_revision") != DETECTOR_REVISION
                                        or old.get("hub_samples") != HUB_SAMPLES):  # fmt: skip
            continue
        if run_key(r) in wanted:
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
                                        "goal": GOAL, "plot": picture.name if picture else None})  # fmt: skip
    return figures, path


@dataclass
class Cell:
    """One cell of a grid (data, strategy, attack, share) over the seeds it ran with, one run per seed."""

    runs: list[dict[str, Any]]

    @property
    def seeds(self) -> set[int]:
        return {int(r.get("seed", 0)) for r in self.runs}

    def by_seed(self, key: str = "accuracy") -> dict[int, float]:
        return {int(r.get("seed", 0)): float(r[key]) for r in self.runs
                if key in r and not math.isnan(float(r[key]))}  # fmt: skip

    def mean(self, key: str = "accuracy") -> float:
        values = list(self.by_seed(key).values())
        return float(np.mean(values)) if values else math.nan

    def sd(self, key: str = "accuracy") -> float:
        """The sample standard deviation over seeds (NaN with one seed: one run says nothing of its spread)."""
        values = list(self.by_seed(key).values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

    def only(self, seeds: set[int]) -> Cell:
        return Cell([r for r in self.runs if int(r.get("seed", 0)) in seeds])

    def shown(self, key: str = "accuracy", digits: int = 3) -> str:
        """``mean`` with one seed, ``mean ± sd`` with more."""
        n = len(self.by_seed(key))
        return f"{self.mean(key):.{digits}f}" + (f" ± {self.sd(key):.{digits}f}" if n > 1 else "")


def cells(runs: list[dict[str, Any]]) -> dict[CellKey, Cell]:
    """The runs grouped by cell; a seed run twice (a resumed file cannot, a hand-merged one could) counts once,
    its later run."""
    latest: dict[RunKey, dict[str, Any]] = {}
    for r in runs:
        latest[run_key(r)] = r
    out: dict[CellKey, Cell] = {}
    for (data, strategy, attack, share, _), r in sorted(latest.items(), key=lambda kv: kv[0][4]):
        out.setdefault(cell_key(data, strategy, attack, share), Cell([])).runs.append(r)
    return out


def cell_key(data: str, strategy: str, attack: str, share: float) -> CellKey:
    return data, strategy, attack, 0.0 if attack == "none" else round(float(share), 6)


def _or_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


@dataclass
class Verdict:
    """The issue's goal for one configuration at one share, judged on the means over the seeds that its
    attack-free run and every attack it ran have in common (a seed missing from one cell is left out of all)."""

    seeds: set[int]
    clean: Cell
    attack: str  # the worst attack: the lowest mean accuracy
    worst: Cell
    tpr: float  # the lowest over the attacks of the mean over seeds of the share of attackers quarantined
    fpr: float  # the highest over the attacks of the mean over seeds of the share of honest devices quarantined
    backdoor: float  # mean over seeds, NaN without a backdoor run
    attacks: int  # how many of ATTACKS ran

    @property
    def drop(self) -> float:
        """Points from the attack-free mean to the worst attack's mean (the mean of the per-seed drops)."""
        return 100 * (self.clean.mean() - self.worst.mean())

    @property
    def drops(self) -> list[float]:
        """Per seed, points: the same seed's split, backbone and training randomness with and without attackers."""
        clean, worst = self.clean.by_seed(), self.worst.by_seed()
        return [100 * (clean[s] - worst[s]) for s in sorted(self.seeds)]

    @property
    def met(self) -> bool:
        return self.drop <= 2 and self.tpr >= 0.9 and self.fpr <= 0.05


def judge(grid_cells: dict[CellKey, Cell], data: str, strategy: str, share: float) -> Verdict | None:
    clean = grid_cells.get(cell_key(data, strategy, "none", 0.0))
    under = {a: grid_cells[k] for a in ATTACKS if (k := cell_key(data, strategy, a, share)) in grid_cells}
    if clean is None or not under:
        return None
    seeds = clean.seeds.intersection(*(c.seeds for c in under.values()))
    if not seeds:
        return None
    clean = clean.only(seeds)
    under = {a: c.only(seeds) for a, c in under.items()}
    attack = min(under, key=lambda a: under[a].mean())
    backdoor = under["backdoor"].mean("backdoor") if "backdoor" in under else math.nan
    return Verdict(seeds, clean, attack, under[attack], min(_or_zero(c.mean("tpr")) for c in under.values()),
                   max(_or_zero(c.mean("fpr")) for c in under.values()), backdoor, len(under))  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each cell's means over its seeds (with ``_accuracy_sd`` and ``_seeds`` when it ran with more than one),
    the best configuration's worst case per share, and each detector configuration's goal figures."""
    figures: dict[str, float] = {}
    grid_cells = cells(runs)
    for (data, strategy, attack, share), cell in grid_cells.items():
        key = f"{data}_{strategy}_{attack}_{round(100 * share)}"
        for k in ("accuracy", "backdoor", "tpr", "fpr", "update_tpr", "update_fpr"):
            if not math.isnan(value := cell.mean(k)):
                figures[f"{key}_{k}"] = value
        if len(cell.seeds) > 1:
            figures[f"{key}_accuracy_sd"] = cell.sd()
            figures[f"{key}_seeds"] = float(len(cell.seeds))
    for data in sorted({k[0] for k in grid_cells}):
        clean = {k[1]: c.mean() for k, c in grid_cells.items() if k[0] == data and k[2] == "none"}
        if "fedavg" in clean:
            figures[f"{data}_clean_accuracy"] = clean["fedavg"]
        for share in sorted({k[3] for k in grid_cells if k[0] == data and k[3] > 0}):
            pct = round(100 * share)
            worst: dict[str, float] = {}  # per strategy, its lowest mean accuracy over the attacks at this share
            for (d, strategy, _, s), cell in grid_cells.items():
                if d == data and s == share:
                    worst[strategy] = min(worst.get(strategy, 1.0), cell.mean())
            if worst:
                best = max(worst, key=lambda s: worst[s])
                figures[f"{data}_best_{pct}_worst_accuracy"] = worst[best]
                figures[f"{data}_best_{pct}_is_{best}"] = 1.0
                # within 2 points of the attack-free accuracy: of the same configuration, and of plain FedAvg
                figures[f"{data}_best_{pct}_drop_points"] = 100 * (clean.get(best, math.nan) - worst[best])
                fedavg = clean.get("fedavg", math.nan)
                figures[f"{data}_best_{pct}_drop_vs_fedavg_points"] = 100 * (fedavg - worst[best])
            for strategy in ("detector", "detector_val"):
                verdict = judge(grid_cells, data, strategy, share)
                if verdict is not None:
                    figures[f"{data}_{strategy}_{pct}_min_tpr"] = verdict.tpr
                    figures[f"{data}_{strategy}_{pct}_max_fpr"] = verdict.fpr
                    figures[f"{data}_{strategy}_{pct}_drop_points"] = verdict.drop
                    figures[f"{data}_{strategy}_{pct}_seeds"] = float(len(verdict.seeds))
                    figures[f"{data}_{strategy}_{pct}_met"] = float(verdict.met)
    return figures


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table: accuracy (backdoor success) per strategy and attack, and the detector's TPR/FPR; means
    over seeds, with the standard deviation when a cell ran with several."""
    grid_cells = cells(runs)
    lines = []
    for data in sorted({k[0] for k in grid_cells}):
        for share in sorted({k[3] for k in grid_cells if k[0] == data and k[3] > 0}):
            lines += [f"\n{data}, {share:.0%} attackers: final accuracy (backdoor success)",
                      "| strategy | none | " + " | ".join(ATTACKS) + " |", "|---|" + "---|" * (len(ATTACKS) + 1)]
            for strategy in STRATEGIES:
                row = []
                for attack in ("none", *ATTACKS):
                    found = grid_cells.get(cell_key(data, strategy, attack, share))
                    if found is None:
                        row.append("")
                        continue
                    cell = found.shown()
                    if not math.isnan(found.mean("backdoor")):
                        cell += f" ({found.mean('backdoor'):.2f})"
                    if attack != "none" and not math.isnan(found.mean("tpr")):
                        cell += f" TPR {found.mean('tpr'):.2f} FPR {found.mean('fpr'):.2f}"
                    elif not math.isnan(found.mean("fpr")):
                        cell += f" FPR {found.mean('fpr'):.2f}"
                    if len(found.seeds) > 1:
                        cell += f" [{len(found.seeds)} seeds]"
                    row.append(cell)
                if any(row):
                    lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    return "\n".join(lines)


GOAL_LEGEND = ("The goal (a row is met when the mean over seeds of its worst attack is within 2 points of the mean "
               "of its attack-free run, and the means over seeds give TPR >= 0.9 and FPR <= 0.05 for every attack; "
               "± is the standard deviation over seeds, the drop's range is the per-seed drops'):")  # fmt: skip


def goal(runs: list[dict[str, Any]]) -> str:
    """The issue's goal per data set and share, for each detector configuration (judge): worst mean accuracy over
    the attacks against its own attack-free mean (met within 2 points), the lowest mean share of attackers
    quarantined (>= 90%), the highest mean share of honest devices quarantined (<= 5%), and the backdoor's
    success."""
    lines = ["| data | share | configuration | seeds | attack-free | worst (attack) | drop, points (per seed) | "
             "min TPR | max FPR | backdoor success | met |", "|---" * 11 + "|"]  # fmt: skip
    grid_cells = cells(runs)
    for data in sorted({k[0] for k in grid_cells}):
        for share in sorted({k[3] for k in grid_cells if k[0] == data and k[3] > 0}):
            for strategy in ("detector", "detector_val"):
                v = judge(grid_cells, data, strategy, share)
                if v is None:
                    continue
                drops = v.drops
                spread = f" ({min(drops):.1f} to {max(drops):.1f})" if len(drops) > 1 else ""
                shown = f"{v.attacks} of {len(ATTACKS)} attacks" if v.attacks < len(ATTACKS) else ""
                met = ("yes" if v.met else "no") + (f", {shown}" if shown else "")
                lines.append(f"| {data} | {share:.0%} | {strategy} | {len(v.seeds)} | {v.clean.shown()} | "
                             f"{v.worst.shown()} ({v.attack}) | {v.drop:.1f}{spread} | {v.tpr:.2f} | {v.fpr:.3f} | "
                             f"{v.backdoor:.2f} | {met} |")  # fmt: skip
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed (pip install 'tinyfed[bench]'); {path} not drawn")
        return None
    grid_cells = cells(runs)
    datasets = sorted({k[0] for k in grid_cells})
    shares = sorted({k[3] for k in grid_cells if k[3] > 0}) or [0.2]
    fig, axes = plt.subplots(len(shares), len(datasets), figsize=(7 * len(datasets), 4.5 * len(shares)), dpi=110,
                             squeeze=False)  # fmt: skip
    for row, share in zip(axes, shares, strict=True):
        for ax, data in zip(row, datasets, strict=True):
            strategies = [s for s in STRATEGIES if any(k[1] == s and k[0] == data for k in grid_cells)]
            attacks = ("none", *ATTACKS)
            width = 0.8 / max(1, len(strategies))
            for i, strategy in enumerate(strategies):
                found = [grid_cells.get(cell_key(data, strategy, attack, share)) for attack in attacks]
                ys = [c.mean() if c is not None else 0.0 for c in found]
                errors = [_or_zero(c.sd()) if c is not None else 0.0 for c in found]  # over seeds, 0 with one
                ax.bar(np.arange(len(attacks)) + i * width, ys, width, yerr=errors, capsize=2, label=strategy)
            ax.set_xticks(np.arange(len(attacks)) + 0.4 - width / 2, attacks, rotation=20)
            ax.set_ylabel("final int8 test accuracy (mean over seeds)")
            ax.set_title(f"{data}: {share:.0%} attackers")
            ax.set_ylim(0, 1)
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def swing_row(density: float, scores: list[list[float]], flagged: int) -> str:
    """One row of the swing table: per seed, the accuracy after every round; the final accuracy's mean and range,
    and the median and largest standard deviation over the second half of the rounds (how far the last round's
    figure can sit from the run's level)."""
    finals = [s[-1] for s in scores]
    spread = [float(np.std(s[len(s) // 2 :])) for s in scores]
    return (f"| {density:g} | {len(scores)} | {np.mean(finals):.3f} ({min(finals):.3f}-{max(finals):.3f}) | "
            f"{np.median(spread):.3f} ({max(spread):.3f}) | {flagged} of {len(scores)} |")  # fmt: skip


def swing(densities: list[float], seeds: int) -> str:
    """HAR's best configuration attack-free, scored after every round, at each density over seeds 0..N-1: the
    measurement that chose HAR's density (docs/robustness.md). In this process (set OPENBLAS_NUM_THREADS=1 on a
    busy machine); about 7 s a run."""
    lines = ["| HAR density | seeds | final accuracy, mean (min-max) | std over the last half of the rounds, median "
             "(max) | runs with an honest subject quarantined |", "|---" * 5 + "|"]  # fmt: skip
    for density in densities:
        scores: list[list[float]] = []
        flagged = 0
        for seed in range(seeds):
            rounds: list[float] = []
            spec = replace(HAR, density=density, seed=seed, score_every=1)
            out = run_one(spec, GOAL["har"], "none", 0.0, on_round=lambda r: rounds.append(r.score))  # noqa: B023
            scores.append(rounds)
            flagged += bool(out.get("fpr", 0.0) > 0)
            print(f"  har density {density:g} seed {seed}: " + " ".join(f"{a:.3f}" for a in rounds), flush=True)
        lines.append(swing_row(density, scores, flagged))
    return "\n".join(lines)


def show(name: str) -> None:
    saved = json.loads((results_dir() / f"{name}.json").read_text())
    shown = saved["details"]["runs"]
    print(f"{name}: {len(shown)} of {saved['details']['jobs']} runs, saved {saved['when']}")
    print(table(shown))
    print(f"\n{GOAL_LEGEND}")
    print(goal(shown))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="10, 20 and 30%% attackers, every strategy")
    parser.add_argument("--every-strategy", action="store_true", help="the suite's grid with every strategy")
    parser.add_argument("--seeds", type=int, default=0, metavar="N",
                        help="the goal's cells (each data set's best configuration attack-free and under every "
                             "attack at 20%%) over seeds 0..N-1, into byzantine-seeds.json")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="processes running the grid (default 2)")
    parser.add_argument("--swing", metavar="DENSITIES",
                        help="HAR attack-free, scored every round, at each comma-separated density over --seeds "
                             "seeds (default 3); prints the swing table, writes nothing")  # fmt: skip
    parser.add_argument("--show", metavar="NAME", help="print the tables of bench/results/NAME.json, run nothing")
    args = parser.parse_args()
    if args.seeds < 0 or args.workers < 1:
        parser.error("--seeds must be >= 0 and --workers >= 1")
    if args.show:
        show(args.show)
    elif args.swing:
        try:
            densities = [float(d) for d in args.swing.split(",")]
        except ValueError:
            parser.error(f"--swing: comma-separated densities in (0, 1], got {args.swing!r}")
        if not all(0 < d <= 1 for d in densities):
            parser.error(f"--swing: comma-separated densities in (0, 1], got {args.swing!r}")
        logging.basicConfig(level=logging.ERROR)
        print(swing(densities, args.seeds or 3))
    else:
        main(args.full, args.workers, args.every_strategy, args.seeds)
