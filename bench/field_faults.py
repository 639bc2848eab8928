"""Benchmark ``field_faults``: five devices on their own CSV files, one of them unable to train.

As a user meets it: the hub builds its model from a sample CSV, each device
runs ``tinyfed device run`` as its own process on its own CSV file, the
gateway runs ``tinyfed gateway run`` as its own process, all on a real
Mosquitto on a free loopback port. One device's file has labels that are
not the model's classes (a mislabelled export, the commonest field fault).

Two federations run in one invocation, on the same data, model and seed:
``with_bad`` (the four good devices and the bad one) and ``without_bad``
(the four good devices alone). The figure is the ratio of their median
round times. Before devices reported failures, every round with the bad
device selected waited for its deadline (``deadline_s``, printed for
comparison); now the bad device's typed failure ends its wait at once and
it is left out of later rounds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result
from edge_runtime.data.sources import load_digits
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.transport.broker import MosquittoProcess

DEVICES = 5
BAD = "dev-4"
DEADLINE = 120.0
WAIT = 600.0


def _write_csv(path: Path, x: np.ndarray, labels: list[str]) -> None:
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["digit"])
    rows = [",".join([*(f"{v:g}" for v in row), label]) for row, label in zip(x, labels, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def _prepare(folder: Path, seed: int) -> tuple[Path, list[Path]]:
    """The hub's sample and model, and one CSV per device (the last one mislabelled)."""
    split = load_digits(seed=seed)
    x, y = split.train.x, split.train.y
    names = [str(c) for c in split.train.classes]
    sample = folder / "hub-sample.csv"
    _write_csv(sample, x[:200], [names[i] for i in y[:200]])
    model = folder / "initial.tflite"
    model.write_bytes(write_graph(build_model("mlp", x[:200], names, seed=seed)))
    order = np.random.default_rng(seed).permutation(len(x))
    files = []
    for i, part in enumerate(np.array_split(order, DEVICES)):
        labels = [names[j] for j in y[part]]
        if f"dev-{i}" == BAD:
            labels = [f"class-{label}" for label in labels]  # exported with the wrong label names
        path = folder / f"dev-{i}.csv"
        _write_csv(path, x[part], labels)
        files.append(path)
    return model, files


def _configs(folder: Path, broker: str, model: Path, files: list[Path], rounds: int, federation: str) -> Path:
    for i, path in enumerate(files):
        (folder / f"dev-{i}.toml").write_text(
            f'[device]\nid = "dev-{i}"\nfederation = "{federation}"\nstorage = "{folder / f"dev-{i}"}"\n'
            f"trainable_layers = 0\n"
            f'[data]\nsource = "{path}"\nlabel_column = "digit"\nholdout = 0.2\n'
            f'[broker]\nurl = "{broker}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n'
            '[trust]\nmode = "insecure"\n'  # what is measured here is faults, not signatures
        )
    gateway = folder / "gateway.toml"
    gateway.write_text(
        f'[gateway]\nfederation = "{federation}"\nstorage = "{folder / "gw"}"\nmodel = "{model}"\n'
        f"[rounds]\nrounds = {rounds}\nmin_devices = {DEVICES - 1}\n"
        f"deadline = {DEADLINE}\nepochs = 2\ndensity = 0.05\nreport_every = 100\n"
        f'[broker]\nurl = "{broker}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n'
        '[trust]\nmode = "insecure"\n'
    )
    return gateway


def _wait_for_births(broker: MosquittoProcess, federation: str, devices: list[str]) -> None:
    """Start the gateway once every device has announced itself, so round 1 selects all of them."""
    from edge_runtime import wire
    from edge_runtime.transport.mqtt import BrokerConfig, MqttLink
    from edge_runtime.transport.topics import Topics

    topics = Topics(federation)
    online: set[str] = set()
    everyone = threading.Event()

    def on_presence(topic: str, payload: bytes) -> None:
        if payload and wire.decode(payload, expect=wire.Presence).online:
            online.add(topics.device_of(topic))
        if online >= set(devices):
            everyone.set()

    watcher = MqttLink(BrokerConfig(url=broker.url), f"watch-{federation}")
    watcher.subscribe(topics.all_presence, on_presence)
    watcher.start()
    try:
        if not everyone.wait(WAIT):
            raise RuntimeError(f"devices {sorted(set(devices) - online)} never announced themselves")
    finally:
        watcher.stop()


def _federation(folder: Path, broker: MosquittoProcess, model: Path, files: list[Path], rounds: int) -> dict[str, Any]:
    federation = folder.name
    gateway_toml = _configs(folder, broker.url, model, files, rounds, federation)
    command = [sys.executable, "-m", "tinyfed", "device", "run", "--config"]
    devices = []
    for i in range(len(files)):
        config = str(folder / f"dev-{i}.toml")
        devices.append(subprocess.Popen([*command, config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        _wait_for_births(broker, federation, [f"dev-{i}" for i in range(len(files))])
        started = time.perf_counter()
        gateway = subprocess.run(
            [sys.executable, "-m", "tinyfed", "gateway", "run", "--config", str(gateway_toml)],
            capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
    finally:
        for device in devices:
            device.terminate()
        for device in devices:
            device.wait(timeout=60)
    wall = time.perf_counter() - started
    if gateway.returncode != 0:
        raise RuntimeError(f"the gateway of {federation} failed: {gateway.stderr[-2000:]}")
    from gateway.store import GatewayStore

    store = GatewayStore(folder / "gw" / "gateway.db")
    rows = [r for r in store.rounds() if r.mode == "sync"]
    seconds = [float((r.closed or r.started) - r.started) for r in rows]
    selected = [sorted(s["device"] for s in store.selections(r.round) if s["kind"] == "train") for r in rows]
    failures = store.failures()
    counts = [store.round_counts(r.round)["train"] for r in rows]
    store.close()
    return {
        "status": [r.status for r in rows],
        "seconds": seconds,
        "selected": selected,
        "updates": counts,
        "failures": [{k: f[k] for k in ("device", "round", "reason", "detail")} for f in failures],
        "wall_seconds": wall,
    }


def main(full: bool = False) -> dict[str, float]:
    rounds = 8 if full else 4
    with tempfile.TemporaryDirectory(prefix="tinyfed-field-") as tmp:
        root = Path(tmp)
        model, files = _prepare(root, seed=0)
        with MosquittoProcess(workdir=root / "broker") as broker:
            runs = {}
            for name, chosen in (("with_bad", files), ("without_bad", [f for f in files if BAD not in f.name])):
                folder = root / name
                folder.mkdir()
                runs[name] = _federation(folder, broker, model, chosen, rounds)
    with_bad, without_bad = runs["with_bad"], runs["without_bad"]
    median_with = statistics.median(with_bad["seconds"])
    median_without = statistics.median(without_bad["seconds"])
    figures = {
        "round_seconds_with_bad": median_with,
        "round_seconds_without_bad": median_without,
        "round_time_ratio": median_with / median_without,
        "deadline_s": DEADLINE,
        "bad_device_selected_after_failing": float(sum(BAD in s for s in with_bad["selected"][1:])),
        "failures_recorded": float(len(with_bad["failures"])),
        "rounds_closed_with_bad": float(with_bad["status"].count("closed")),
    }
    print_table("field_faults", figures)
    for name, run in runs.items():
        shown = ", ".join(f"{s:.1f}" for s in run["seconds"])
        print(f"  {name}: rounds {run['status'].count('closed')}/{len(run['status'])} closed, seconds [{shown}], "
              f"updates {run['updates']}")  # fmt: skip
    for failure in with_bad["failures"]:
        print(f"  recorded: round {failure['round']} {failure['device']}: {failure['detail']}")
    write_result("field_faults", figures, {"rounds": rounds, "devices": DEVICES, "bad": BAD, "runs": runs})
    return figures


if __name__ == "__main__":
    main("--full" in sys.argv)
