"""Round time and gateway cost for 10, 100 and 1,000 devices on one machine, through Mosquitto.

The gateway runs as ``tinyfed gateway run`` in its own process, against a
Mosquitto on a free loopback port; the devices are simulated by
``bench/sim_devices.py`` in at most four processes, each device a real MQTT
client with its own connection, birth message, last will, task
subscription and real encoded updates (see that module: no training, so
what is measured is the gateway and the broker). Each fleet size runs
three synchronous rounds in which every device is asked and answers, then
the final evaluation round.

Figures: ``seconds_per_round_N`` (median round, opening to closing, from
the gateway's own round summaries), the gateway process's CPU seconds per
update and its peak RSS, and ``per_device_cost_ratio_1000_vs_10``: the
round time per device at 1,000 over that at 10, measured in the same run
(below 1 means the fixed costs of a round are being shared).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, write_result

SIZES = (10, 100, 1000)
ROUNDS = 3
PROCESSES = 4
ROUND_LINE = re.compile(r"round\s+(\d+) (\w+)\s+updates\s+(\d+).*?([\d.]+) s$")


def _initial_model(folder: Path) -> Path:
    from edge_runtime.data.sources import load_source
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model

    split = load_source("digits")
    path = folder / "initial.tflite"
    path.write_bytes(write_graph(build_model("mlp", split.train.x, split.train.classes, seed=0)))
    return path


def _gateway_config(folder: Path, url: str, federation: str, model: Path, devices: int) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f"""
[gateway]
federation = "{federation}"
storage = "{folder / "gw"}"
model = "{model}"
connect_timeout = 30.0

[rounds]
rounds = {ROUNDS}
min_devices = {devices}
deadline = 300.0
density = 0.01
report_every = 1000

[broker]
url = "{url}"

[trust]
mode = "insecure"  # the rounds' scale is measured here, signatures by `tinyfed bench signing`
"""
    )
    return path


def _watch(pid: int, peak: dict[str, float], stop: threading.Event) -> None:
    import psutil

    process = psutil.Process(pid)
    while not stop.wait(0.1):
        try:
            peak["rss"] = max(peak["rss"], process.memory_info().rss)
            peak["cpu"] = sum(process.cpu_times()[:2])
        except psutil.Error:
            return


def run_size(devices: int, folder: Path) -> dict[str, Any]:
    from edge_runtime.transport.broker import MosquittoProcess

    folder.mkdir(parents=True)
    model = _initial_model(folder)
    federation = f"scale{devices}"
    with MosquittoProcess(workdir=folder / "broker") as broker:
        host_port = f"127.0.0.1:{broker.port}"
        per = -(-devices // min(PROCESSES, devices))
        fleets = []
        for first in range(0, devices, per):
            fleets.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.sim_devices",
                        "--broker",
                        host_port,
                        "--federation",
                        federation,
                        "--first",
                        str(first),
                        "--count",
                        str(min(per, devices - first)),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for fleet in fleets:
            assert fleet.stdout is not None
            line = fleet.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"simulated devices did not connect: {line!r}")
        config = _gateway_config(folder, broker.url, federation, model, devices)
        started = time.perf_counter()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tinyfed", "gateway", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        peak = {"rss": 0.0, "cpu": 0.0}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(gateway.pid, peak, stop), daemon=True)
        watcher.start()
        rounds: list[tuple[int, str, int, float]] = []
        assert gateway.stdout is not None
        for line in gateway.stdout:
            match = ROUND_LINE.search(line.strip())
            if match:
                rounds.append((int(match[1]), match[2], int(match[3]), float(match[4])))
        gateway.wait(timeout=600)
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
        for fleet in fleets:
            assert fleet.stdin is not None
            fleet.stdin.close()
            fleet.wait(timeout=120)
    from gateway.store import GatewayStore

    store = GatewayStore(folder / "gw" / "gateway.db")
    rows = store.rounds()
    training = [r for r in rows if r.mode == "sync"]
    counts = [store.round_counts(r.round)["train"] for r in training]
    if len(training) != ROUNDS or any(r.status != "closed" for r in training) or set(counts) != {devices}:
        raise RuntimeError(f"{devices} devices: rounds did not complete as asked: {rounds}")
    updates = sum(r[2] for r in rounds)
    seconds = [float(r.closed or r.started) - r.started for r in training]  # from the gateway's own clock
    return {
        "devices": devices,
        "rounds": [
            {"round": r.round, "mode": r.mode, "seconds": float(r.closed or r.started) - r.started} for r in rows
        ],
        "seconds_per_round": statistics.median(seconds),
        "gateway_cpu_seconds": peak["cpu"],
        "gateway_cpu_ms_per_update": 1000 * peak["cpu"] / max(1, updates),
        "gateway_peak_rss_mib": peak["rss"] / 2**20,
        "wall_seconds": wall,
    }


def main(full: bool = False) -> dict[str, float]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for devices in SIZES:
            run = run_size(devices, Path(tmp) / str(devices))
            runs.append(run)
            print(
                f"{devices:>5} devices: {run['seconds_per_round']:.2f} s per round, gateway "
                f"{run['gateway_cpu_ms_per_update']:.2f} ms CPU per update, "
                f"peak RSS {run['gateway_peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    by_size = {r["devices"]: r for r in runs}
    figures: dict[str, float] = {}
    for devices, run in by_size.items():
        figures[f"seconds_per_round_{devices}"] = round(run["seconds_per_round"], 3)
    figures["per_device_cost_ratio_1000_vs_10"] = round(
        (by_size[1000]["seconds_per_round"] / 1000) / (by_size[10]["seconds_per_round"] / 10), 4
    )
    figures["gateway_cpu_ms_per_update_1000"] = round(by_size[1000]["gateway_cpu_ms_per_update"], 3)
    figures["gateway_peak_rss_mib_1000"] = round(by_size[1000]["gateway_peak_rss_mib"], 1)
    figures["gateway_rss_ratio_1000_vs_10"] = round(
        by_size[1000]["gateway_peak_rss_mib"] / by_size[10]["gateway_peak_rss_mib"], 3
    )
    path = write_result("round_scale", figures, {"runs": runs, "processes": PROCESSES, "rounds": ROUNDS})
    print_table("round_scale", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
