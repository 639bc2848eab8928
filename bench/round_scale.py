"""Round time and hub cost for 10 to 10,000 devices on one machine, through one Mosquitto, beside the MQTT floor.

The gateway runs as ``tinyfed gateway run`` in its own process, against a
Mosquitto on a free loopback port; the devices are simulated by
``bench/sim_devices.py`` in two processes (one per core), each device with
its own MQTT connection, birth message, last will, task, receipt and
manifest subscriptions and real encoded updates. The simulator writes its
MQTT packets by hand on one non-blocking socket loop per process (see that
module for why: with a paho client per device the simulators, not the hub,
set the pace). No training, so what is measured is the gateway and the
broker. Each fleet size runs synchronous rounds in which every device is
asked and answers (``rounds_for``: ten, three at 10,000 devices), then the
final evaluation. The suite runs 10, 100 and
1,000 devices; ``--full`` adds 10,000. Connecting the fleet
(``setup_seconds``) and the gateway's start (10,000 retained births read)
come before the first round and are not in its time.

Four settings, measured in the same run:

- ``after``: the hub as shipped: group commit (``[gateway] commit_batch``,
  ``commit_delay``) and a broker that saves its state every
  ``HUB_AUTOSAVE_S`` seconds (broker.py, docs/operations.md);
- ``before``: one fsync'd commit per update (``commit_batch = 1``) and a
  broker that saves its whole database on every change, as this hub ran
  before (1,000 devices, in the suite and under ``--full``);
- ``floor``: on the ``after`` broker with the same connected fleet, once
  the gateway has finished, a skeleton hub (one connection on the
  simulators' codec, no tinyfed) moves the same MQTT messages: a task to
  every device, a receipt for each update. Its round time is what MQTT and
  the simulators cost alone. Then the same rounds on tinyfed's own MQTT
  client (``PahoHub``: ``MqttLink``, paho-mqtt) with nothing of the intake
  in between: ``paho_floor_cpu_ms_per_update_N`` is what the MQTT client
  alone costs the hub per update;
- ``python``: as ``after`` at 1,000 devices, the gateway with its C intake
  path turned off (``TINYFED_PURE_PYTHON=1``, edge_runtime/wire/accel.py),
  when it is built: ``gateway_cpu_ratio_python_vs_c_1000``.

Figures per size N: ``seconds_per_round_N`` (median round, opening to
closing, from the gateway's own clock), the gateway's and the broker's
CPU per update from the first training round's opening to the last one's
close (the opening and closing work between rounds included; each end
read between the 0.1 s samples around it;
``gateway_cpu_ms_per_update_bracketed_N`` is the same CPU as read before
the run of 2026-12-01 21:35 UTC, each round's span widened to the samples
around it) and their peak RSS, the
simulators' CPU per update, the floor's round time and the ratio to it,
and the before/after ratios. ``cpu_share_of_round`` says how much of the
machine's two cores each side kept busy during the rounds: a gateway near
half (one core: its Python threads share one interpreter lock) is the
bottleneck; everyone far below it means waiting (figure
``gateway_busy_of_one_core_N``: 1.0 is one core the whole round). The machine
is shared; the ratios are what carries from one run to the next.
"""

from __future__ import annotations

import bisect
import math
import os
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
FULL_SIZES = (10, 100, 1000, 10_000)
BEFORE_SIZES = (1000,)
FULL_BEFORE_SIZES = (1000,)  # one fsync per update at 10,000 devices would take minutes a round here
ROUNDS = 3  # at 10,000 devices: 30,000 updates, 15-25 s of the gateway's CPU
SMALL_FLEET_ROUNDS = 10  # below: three rounds of 1,000 updates were 1.5 s of CPU, and two idle runs 16 minutes
# apart read 0.51 and 0.72 ms per update from them (2026-12-01); ten give 3.3 times the updates (about 8 s of CPU)


def rounds_for(devices: int) -> int:
    """Rounds a fleet size runs (the gateway's, each floor's): enough updates that its CPU per update is read
    over seconds, not over the machine's moment-to-moment speed."""
    return ROUNDS if devices >= 10_000 else SMALL_FLEET_ROUNDS


PROCESSES = 2  # simulator processes: one per core; each serves its devices' sockets on one loop
# A simulator's last line: its answers and their receipts, and of those the floor's.
ANSWERED = re.compile(r"answered (\d+) receipts (\d+) .*floor_answered (\d+) floor_receipts (\d+)")
ROUND_LINE = re.compile(r"round\s+(\d+) (\w+)\s+updates\s+(\d+).*?([\d.]+) s$")


def _initial_model(folder: Path) -> Path:
    from edge_runtime.data.sources import load_source
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model

    split = load_source("digits")
    path = folder / "initial.tflite"
    path.write_bytes(write_graph(build_model("mlp", split.train.x, split.train.classes, seed=0)))
    return path


def _gateway_config(
    folder: Path, url: str, federation: str, model: Path, devices: int, commit_batch: int, rounds: int
) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f"""
[gateway]
federation = "{federation}"
storage = "{folder / "gw"}"
model = "{model}"
connect_timeout = 30.0
commit_batch = {commit_batch}

[rounds]
rounds = {rounds}
min_devices = {devices}
deadline = 600.0
density = 0.01
report_every = 1000

[broker]
url = "{url}"

[trust]
mode = "insecure"  # the rounds' scale is measured here, signatures by `tinyfed bench signing`
"""
    )
    return path


class Watch:
    """CPU seconds (user + system) and RSS of the gateway and the broker, sampled every 0.1 s with wall time."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: list[tuple[float, dict[str, float], dict[str, float]]] = []  # (time, cpu, rss)
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.1):
            cpu, rss = {}, {}
            for name, process in self.processes.items():
                try:
                    cpu[name] = sum(process.cpu_times()[:2])
                    rss[name] = float(process.memory_info().rss)
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss[name])
            self.samples.append((time.time(), cpu, rss))

    def cpu_between(self, name: str, start: float, end: float) -> float:
        """CPU seconds ``name`` spent from ``start`` to ``end`` (wall-clock times), each end read off the line
        between the two samples around it. Taking the sample before ``start`` and the one after ``end`` instead
        (``cpu_bracketing``) counts up to 0.2 s more of every span (a round is 0.5-0.7 s at 1,000 devices), and
        counts twice a gap between two rounds shorter than a sample. In the four runs of 2026-12-01 since, the two
        readings (this one over the whole run, with the work between rounds in it) differed by under 1% to 7%."""
        return self._cpu_at(name, end) - self._cpu_at(name, start)

    def cpu_bracketing(self, name: str, start: float, end: float) -> float:
        """``cpu_between`` as read before the run of 2026-12-01 21:35 UTC: from the sample at or before ``start``
        to the one at or after ``end``, an upper bound (kept to compare with the figures taken that way)."""
        before = [s[1][name] for s in self.samples if s[0] <= start and name in s[1]]
        after = [s[1][name] for s in self.samples if s[0] >= end and name in s[1]]
        first = before[-1] if before else self.samples[0][1].get(name, 0.0)
        last = after[0] if after else self.samples[-1][1].get(name, 0.0)
        return last - first

    def _cpu_at(self, name: str, moment: float) -> float:
        points = [(t, cpu[name]) for t, cpu, _ in self.samples if name in cpu]
        if not points:
            return 0.0
        later = bisect.bisect_left(points, (moment, -math.inf))
        if later == 0:
            return points[0][1]
        if later == len(points):
            return points[-1][1]
        (t0, c0), (t1, c1) = points[later - 1], points[later]
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0) if t1 > t0 else c1

    def wait_past(self, moment: float) -> None:
        """Until a sample later than ``moment`` (wall clock) is taken; an error if the sampler stopped sampling."""
        deadline = time.monotonic() + 30.0
        while not self.samples or self.samples[-1][0] < moment:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the process sampler took no sample for 30 s: its thread stopped")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _fleets(host_port: str, federation: str, devices: int) -> list[subprocess.Popen[str]]:
    per = -(-devices // min(PROCESSES, devices))
    fleets = []
    for first in range(0, devices, per):
        argv = [sys.executable, "-m", "bench.sim_devices", "--broker", host_port, "--federation", federation,
                "--first", str(first), "--count", str(min(per, devices - first))]  # fmt: skip
        fleets.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for fleet in fleets:
        assert fleet.stdout is not None
        line = fleet.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"simulated devices did not connect: {line!r}")
    return fleets


DRAIN_DEVICE = "paho-floor-drain"  # a receipt topic no device listens on


class PahoHub:
    """The floor on the gateway's own MQTT client: tinyfed's ``MqttLink`` (paho-mqtt), moving what the skeleton
    hub moves (a task to each device at QoS 1 with a message expiry, each update PUBACKed, a receipt for each at
    QoS 1) with nothing of tinyfed's intake in between. Its CPU per update is what the MQTT client alone costs a
    hub, to set beside the gateway's and beside its intake without MQTT (``intake_cpu_ms_per_update_group``)."""

    def __init__(self, url: str, federation: str, client_id: str = "paho-floor-hub") -> None:
        from edge_runtime.transport.broker_config import BrokerConfig
        from edge_runtime.transport.mqtt import MqttLink
        from edge_runtime.transport.topics import Topics

        from .sim_devices import FLOOR_RECEIPT

        self.topics = Topics(federation)
        self.receipt = FLOOR_RECEIPT
        self.updates = 0
        self.unsent = 0  # receipts paho would not take (disconnected): the round fails at once, not at its timeout
        self._counted = threading.Condition()
        before = {t.ident for t in threading.enumerate()}
        self.link = MqttLink(BrokerConfig(url=url), client_id)
        self.link.subscribe(self.topics.all_updates, self._on_update)
        self.link.start()
        if not self.link.wait_ready(30.0):
            raise RuntimeError(f"the paho floor's hub did not connect to {url}: {self.link.last_error}")
        name = f"mqtt-{client_id}"  # MqttLink's network thread: the one this start made, not an older one's
        (network,) = [t for t in threading.enumerate() if t.name == name and t.ident not in before]
        assert network.ident is not None
        self._network_clock = time.pthread_getcpuclockid(network.ident)

    def _on_update(self, topic: str, payload: bytes) -> None:
        sent = self.link.publish(self.topics.receipt(self.topics.device_of(topic)), self.receipt)
        with self._counted:
            self.updates += 1
            self.unsent += not sent
            self._counted.notify_all()

    def cpu(self) -> float:
        """CPU seconds of this hub's two threads (paho's network thread and the caller's), not the process's
        (which has the sampler's thread too)."""
        return time.clock_gettime(self._network_clock) + time.thread_time()

    def round(self, names: list[str], task: bytes, expiry: int) -> float:
        """Send ``task`` to every device and wait for an update from each; returns the seconds it took."""
        start = time.perf_counter()
        with self._counted:
            target = self.updates + len(names)
        for name in names:
            if not self.link.publish(self.topics.task(name), task, expiry=expiry):
                raise RuntimeError(f"the paho floor's hub lost the broker: {self.link.last_error}")
        with self._counted:
            heard = self._counted.wait_for(lambda: self.updates >= target or self.unsent > 0, timeout=600)
            if self.unsent:
                raise RuntimeError(f"the paho floor's hub could not send {self.unsent} receipt(s): disconnected")
            if not heard:
                raise RuntimeError(f"the paho floor's hub heard {self.updates} of {target} updates in 600 s")
        return time.perf_counter() - start

    def drain(self) -> None:
        """Until every receipt queued so far is with the broker: paho keeps at most 20 QoS 1 messages in flight
        and queues the rest, in order, so the PUBACK of one published last answers for them all. Without it a
        round's CPU missed its last receipts, and closing the link dropped them."""
        if not self.link.publish(self.topics.receipt(DRAIN_DEVICE), b"", timeout=120.0):
            raise RuntimeError("the paho floor's hub could not hand its receipts to the broker in 120 s")

    def close(self) -> None:
        self.link.stop()


def _floor(host: str, port: int, federation: str, devices: int, watch: Watch, rounds: int) -> dict[str, Any]:
    """The skeleton hub: the same tasks out and receipts back, on the simulators' own codec, no tinyfed; then
    the same rounds on tinyfed's MQTT client alone (``PahoHub``)."""
    import os

    from edge_runtime import wire

    from .sim_devices import FLOOR_FIRST_ROUND, SkeletonHub, sim_name

    hub = SkeletonHub(host, port, federation)
    names = [sim_name(i) for i in range(devices)]
    seconds, broker_cpu, hub_cpu, sim_cpu = [], [], [], []
    version = bytes(32)
    sims = [name for name in watch.processes if name.startswith("sim")]
    for number in range(FLOOR_FIRST_ROUND, FLOOR_FIRST_ROUND + rounds):
        task = wire.encode(wire.Task(os.urandom(16), number, version, 1, 0.05, 0.01, int(time.time()) + 600))
        start_wall, cpu = time.time(), time.thread_time()  # its one thread: not the sampler's
        seconds.append(hub.round(names, task))
        hub_cpu.append(time.thread_time() - cpu)
        watch.wait_past(start_wall + seconds[-1])  # a sample of the broker's CPU after the round's end
        broker_cpu.append(watch.cpu_between("broker", start_wall, start_wall + seconds[-1]))
        sim_cpu.append(sum(watch.cpu_between(s, start_wall, start_wall + seconds[-1]) for s in sims))
    hub.close()
    paho = PahoHub(f"mqtt://{host}:{port}", federation)
    paho_seconds, paho_cpu = [], []
    try:
        for number in range(FLOOR_FIRST_ROUND + rounds, FLOOR_FIRST_ROUND + 2 * rounds):
            deadline = int(time.time()) + 600
            task = wire.encode(wire.Task(os.urandom(16), number, version, 1, 0.05, 0.01, deadline))
            cpu = paho.cpu()
            paho_seconds.append(paho.round(names, task, expiry=600))
            paho.drain()
            paho_cpu.append(paho.cpu() - cpu)
    finally:
        paho.close()
    return {
        "seconds_per_round": statistics.median(seconds),
        "rounds_seconds": seconds,
        "hub_cpu_ms_per_update": 1000 * statistics.median(hub_cpu) / devices,
        "broker_cpu_ms_per_update": 1000 * statistics.median(broker_cpu) / devices,
        "simulators_cpu_ms_per_update": 1000 * statistics.median(sim_cpu) / devices,
        "paho_seconds_per_round": statistics.median(paho_seconds),
        "paho_hub_cpu_ms_per_update": 1000 * statistics.median(paho_cpu) / devices,
    }


def run_size(devices: int, folder: Path, setting: str = "after", floor: bool = False) -> dict[str, Any]:
    """One fleet size under one setting ('after': group commit, hub autosave; 'before': neither; 'python': as
    'after', the gateway without its C intake path)."""
    from edge_runtime.transport.broker import HUB_AUTOSAVE_S, MosquittoProcess

    folder.mkdir(parents=True)
    model = _initial_model(folder)
    federation = f"scale{devices}"
    autosave = HUB_AUTOSAVE_S if setting != "before" else None
    commit_batch = 256 if setting != "before" else 1
    asked = rounds_for(devices)
    env = {**os.environ, "TINYFED_PURE_PYTHON": "1"} if setting == "python" else None
    with MosquittoProcess(workdir=folder / "broker", autosave_interval=autosave) as broker:
        assert broker.process is not None
        host_port = f"127.0.0.1:{broker.port}"
        setup = time.perf_counter()
        fleets = _fleets(host_port, federation, devices)
        setup = time.perf_counter() - setup
        config = _gateway_config(folder, broker.url, federation, model, devices, commit_batch, asked)
        started, spawned = time.perf_counter(), time.time()
        log = (folder / "gateway.log").open("w")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tinyfed", "gateway", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
        )  # fmt: skip
        pids = {"gateway": gateway.pid, "broker": broker.process.pid}
        watch = Watch(pids | {f"sim{i}": fleet.pid for i, fleet in enumerate(fleets)})
        rounds: list[tuple[int, str, int, float]] = []
        assert gateway.stdout is not None
        for line in gateway.stdout:
            match = ROUND_LINE.search(line.strip())
            if match:
                rounds.append((int(match[1]), match[2], int(match[3]), float(match[4])))
        gateway.wait(timeout=600)
        log.close()
        wall = time.perf_counter() - started
        # Peaks up to the gateway's exit: its session outlives it, so the broker queues the floors' updates for
        # it (60,000 at 10,000 devices), which is the benchmark's doing, not the hub's.
        peak = dict(watch.peak)
        floor_run = _floor("127.0.0.1", broker.port, federation, devices, watch, asked) if floor else None
        stats: list[str] = []
        watch.stop()
        for fleet in fleets:
            assert fleet.stdin is not None
            fleet.stdin.close()
            fleet.wait(timeout=120)
            assert fleet.stdout is not None
            stats.append(fleet.stdout.read().strip())
    from gateway.store import GatewayStore

    store = GatewayStore(folder / "gw" / "gateway.db")
    rows = store.rounds()
    training = [r for r in rows if r.mode == "sync"]
    counts = [store.round_counts(r.round)["train"] for r in training]
    store.close()
    if len(training) != asked or any(r.status != "closed" for r in training) or set(counts) != {devices}:
        tail = (folder / "gateway.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{devices} devices ({setting}): rounds did not complete as asked: {rounds}; the "
                           "gateway's log ends:\n" + "\n".join(tail))  # fmt: skip
    seconds = [float(r.closed or r.started) - r.started for r in training]  # from the gateway's own clock
    spans = [(r.started, float(r.closed or r.started)) for r in training]
    updates = asked * devices
    # From the first training round's opening to the last one's close: the rounds and the opening and closing
    # work between them, each end interpolated between the 0.1 s samples around it (Watch.cpu_between).
    first, last = spans[0][0], spans[-1][1]
    gateway_cpu = watch.cpu_between("gateway", first, last)
    broker_cpu = watch.cpu_between("broker", first, last)
    sims = [name for name in watch.processes if name.startswith("sim")]
    sim_cpu = sum(watch.cpu_between(name, first, last) for name in sims)
    bracketed = sum(watch.cpu_bracketing("gateway", a, b) for a, b in spans)
    busy = last - first
    tallies = [(int(a), int(r), int(fa), int(fr)) for a, r, fa, fr in ANSWERED.findall("\n".join(stats))]
    return {
        "devices": devices,
        "setting": setting,
        "rounds": [
            {"round": r.round, "mode": r.mode, "seconds": float(r.closed or r.started) - r.started} for r in rows
        ],
        "seconds_per_round": statistics.median(seconds),
        "gateway_cpu_ms_per_update": 1000 * gateway_cpu / updates,
        # The same CPU as read before the run of 2026-12-01 21:35 UTC (each round's span widened to the samples
        # around it), to compare with the figures taken that way.
        "gateway_cpu_ms_per_update_bracketed": 1000 * bracketed / updates,
        "broker_cpu_ms_per_update": 1000 * broker_cpu / updates,
        "gateway_peak_rss_mib": peak["gateway"] / 2**20,
        "broker_peak_rss_mib": peak["broker"] / 2**20,
        "simulators_cpu_ms_per_update": 1000 * sim_cpu / updates,
        # Of the machine's two cores during the training rounds, the share each side kept busy: what is left
        # idle is waiting (on a deadline, a timer, a round trip), not work.
        "cpu_share_of_round": {
            "gateway": gateway_cpu / busy / 2,
            "broker": broker_cpu / busy / 2,
            "simulators": sim_cpu / busy / 2,
        },
        "setup_seconds": setup,
        # From the gateway's spawn to its first round: start-up, the store, and reading every retained birth.
        "start_seconds": training[0].started - spawned,
        "wall_seconds": wall,
        "simulators": stats,
        # Every answer a simulated device sent has its receipt back: the rounds are counted by the gateway, the
        # receipts only by the devices. The gateway's, and the floor's apart.
        "receipts_missing": sum(a - fa - (r - fr) for a, r, fa, fr in tallies),
        "floor_receipts_missing": sum(fa - fr for _, _, fa, fr in tallies),
        "floor": floor_run,
    }


def intake_ms(folder: Path, model: Path, batch: int, devices: int = 1000) -> dict[str, float]:
    """Wall and CPU time per accepted update of the gateway's intake without MQTT: decode, validate, stage,
    commit (``batch`` updates per fsync'd commit), fold; one round of ``devices`` real updates in the compact
    layout devices send by default."""

    import numpy as np

    from edge_runtime import wire
    from edge_runtime.compress.compressor import CompressionConfig, Compressor
    from edge_runtime.wire.compact import new_update_id
    from gateway.admission import AdmissionRules
    from gateway.aggregate import update_norm
    from gateway.clock import FakeClock
    from gateway.config import GatewayConfig
    from gateway.policy import RoundPolicy, TaskSettings
    from gateway.publisher import Publisher
    from gateway.registry import Eligibility, Registry
    from gateway.rounds import Rounds
    from gateway.store import GatewayStore
    from gateway.strategies.fedavg import FedAvg

    config = GatewayConfig.from_mapping(
        {"gateway": {"federation": "intake", "storage": str(folder / "gw"), "model": str(model)},
         "rounds": {"min_devices": devices, "deadline": 600.0}, "trust": {"mode": "insecure"}},
        env={},
    )  # fmt: skip
    store = GatewayStore(config.storage / "gateway.db")
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0))
    publisher = Publisher(config, store, FedAvg())
    rounds = Rounds(store, Registry(store), publisher, policy, AdmissionRules("sync", 1000.0, 5), FakeClock())
    rounds.max_batch, rounds.keep_receipts = batch, True
    for i in range(devices):
        caps = wire.Capabilities(ram=1 << 20, backend="sim", samples=100)
        birth = wire.Presence(f"sim-{i:05d}", True, 1, 0, caps)
        rounds.registry.observe(birth, wire.encode(birth))
    tasks = rounds.step().tasks
    rng = np.random.default_rng(0)
    deltas = {t: rng.normal(0, 0.01, n).astype(np.float32) for t, n in rounds.sizes.items()}
    tensors = Compressor(CompressionConfig(density=0.01)).compress(deltas).tensors
    spec = dict(rounds.spec)
    raws = [(d, wire.encode_compact(wire.Update(new_update_id(), d, t.round, t.base_version, 100, tensors), spec))
            for d, t in tasks]  # fmt: skip
    versions = [t.base_version for _, t in tasks[:1]]
    wall, cpu = time.perf_counter(), time.process_time()
    for device, raw in raws:
        update = wire.decode(raw, expect=wire.Update, spec=spec, device=device, versions=versions)
        rounds.intake(update, raw, device, update_norm(update))
    rounds.flush()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert rounds.open_round is not None and rounds.open_round.aggregate.count == devices
    store.close()
    return {"wall_ms": 1000 * wall / devices, "cpu_ms": 1000 * cpu / devices}


def main(full: bool = False) -> dict[str, float]:
    from edge_runtime.wire import accel

    runs: list[dict[str, Any]] = []
    sizes, before_sizes = (FULL_SIZES, FULL_BEFORE_SIZES) if full else (SIZES, BEFORE_SIZES)
    with tempfile.TemporaryDirectory() as tmp:
        model = _initial_model(Path(tmp))
        intake: dict[int, list[dict[str, float]]] = {1: [], 256: []}
        for repeat in range(3):  # alternated: a busy moment of the shared machine hits both
            for batch in intake:
                intake[batch].append(intake_ms(Path(tmp) / f"intake{batch}-{repeat}", model, batch))
        print("gateway intake without MQTT, ms per update (wall / CPU): "
              + ", ".join(f"batch {b}: {statistics.median(r['wall_ms'] for r in v):.3f} / "
                          f"{statistics.median(r['cpu_ms'] for r in v):.3f}" for b, v in intake.items()),
              flush=True)  # fmt: skip
        plan = [(n, "after", n >= 1000) for n in sizes] + [(n, "before", False) for n in before_sizes]
        if accel.built is not None:  # the same hub without its C intake path: what the compiled decoders save
            plan.append((1000, "python", False))
        for devices, setting, floor in plan:
            run = run_size(devices, Path(tmp) / f"{setting}{devices}", setting, floor)
            runs.append(run)
            extra = ""
            if run["floor"] is not None:
                extra = f"; MQTT-only floor {run['floor']['seconds_per_round']:.2f} s per round"
            print(
                f"{devices:>5} devices ({setting}): {run['seconds_per_round']:.2f} s per round, gateway "
                f"{run['gateway_cpu_ms_per_update']:.3f} ms CPU per update "
                f"({run['gateway_cpu_ms_per_update_bracketed']:.3f} bracketed), broker "
                f"{run['broker_cpu_ms_per_update']:.3f} ms, peak RSS gateway {run['gateway_peak_rss_mib']:.0f} MiB "
                f"broker {run['broker_peak_rss_mib']:.0f} MiB{extra}",
                flush=True,
            )
    after = {r["devices"]: r for r in runs if r["setting"] == "after"}
    python = {r["devices"]: r for r in runs if r["setting"] == "python"}
    before = {r["devices"]: r for r in runs if r["setting"] == "before"}
    figures: dict[str, float] = {}
    for devices, run in after.items():
        figures[f"seconds_per_round_{devices}"] = round(run["seconds_per_round"], 3)
    figures["per_device_cost_ratio_1000_vs_10"] = round(
        (after[1000]["seconds_per_round"] / 1000) / (after[10]["seconds_per_round"] / 10), 4
    )
    for devices, run in after.items():
        if devices < 1000:
            continue
        figures[f"gateway_cpu_ms_per_update_{devices}"] = round(run["gateway_cpu_ms_per_update"], 3)
        figures[f"gateway_cpu_ms_per_update_bracketed_{devices}"] = round(run["gateway_cpu_ms_per_update_bracketed"], 3)
        figures[f"broker_cpu_ms_per_update_{devices}"] = round(run["broker_cpu_ms_per_update"], 3)
        figures[f"gateway_peak_rss_mib_{devices}"] = round(run["gateway_peak_rss_mib"], 1)
        figures[f"broker_peak_rss_mib_{devices}"] = round(run["broker_peak_rss_mib"], 1)
        figures[f"simulators_cpu_ms_per_update_{devices}"] = round(run["simulators_cpu_ms_per_update"], 3)
        figures[f"gateway_busy_of_one_core_{devices}"] = round(2 * run["cpu_share_of_round"]["gateway"], 3)
        figures[f"gateway_start_seconds_{devices}"] = round(run["start_seconds"], 2)
        figures[f"receipts_missing_{devices}"] = run["receipts_missing"]  # the gateway's
        figures[f"floor_receipts_missing_{devices}"] = run["floor_receipts_missing"]
        floor = run["floor"]
        figures[f"floor_seconds_per_round_{devices}"] = round(floor["seconds_per_round"], 3)
        figures[f"round_vs_floor_{devices}"] = round(run["seconds_per_round"] / floor["seconds_per_round"], 3)
        figures[f"floor_hub_cpu_ms_per_update_{devices}"] = round(floor["hub_cpu_ms_per_update"], 4)
        figures[f"paho_floor_seconds_per_round_{devices}"] = round(floor["paho_seconds_per_round"], 3)
        figures[f"paho_floor_cpu_ms_per_update_{devices}"] = round(floor["paho_hub_cpu_ms_per_update"], 3)
        figures[f"paho_floor_share_of_gateway_cpu_{devices}"] = round(
            floor["paho_hub_cpu_ms_per_update"] / run["gateway_cpu_ms_per_update"], 3
        )
    for devices, run in before.items():
        figures[f"before_seconds_per_round_{devices}"] = round(run["seconds_per_round"], 3)
        figures[f"before_gateway_cpu_ms_per_update_{devices}"] = round(run["gateway_cpu_ms_per_update"], 3)
        figures[f"before_broker_cpu_ms_per_update_{devices}"] = round(run["broker_cpu_ms_per_update"], 3)
        figures[f"round_speedup_vs_before_{devices}"] = round(
            run["seconds_per_round"] / after[devices]["seconds_per_round"], 3
        )
        figures[f"gateway_cpu_ratio_before_vs_after_{devices}"] = round(
            run["gateway_cpu_ms_per_update"] / after[devices]["gateway_cpu_ms_per_update"], 3
        )
        figures[f"broker_cpu_ratio_before_vs_after_{devices}"] = round(
            run["broker_cpu_ms_per_update"] / max(after[devices]["broker_cpu_ms_per_update"], 1e-9), 3
        )
    for devices, run in python.items():
        figures[f"python_seconds_per_round_{devices}"] = round(run["seconds_per_round"], 3)
        figures[f"python_gateway_cpu_ms_per_update_{devices}"] = round(run["gateway_cpu_ms_per_update"], 3)
        figures[f"gateway_cpu_ratio_python_vs_c_{devices}"] = round(
            run["gateway_cpu_ms_per_update"] / after[devices]["gateway_cpu_ms_per_update"], 3
        )
    figures["c_path_built"] = int(accel.built is not None)
    for batch, label in ((256, "group"), (1, "one_fsync_each")):
        figures[f"intake_wall_ms_per_update_{label}"] = round(statistics.median(r["wall_ms"] for r in intake[batch]), 3)
        figures[f"intake_cpu_ms_per_update_{label}"] = round(statistics.median(r["cpu_ms"] for r in intake[batch]), 3)
    figures["intake_wall_ratio_one_fsync_each_vs_group"] = round(
        figures["intake_wall_ms_per_update_one_fsync_each"] / figures["intake_wall_ms_per_update_group"], 3
    )
    figures["gateway_rss_ratio_1000_vs_10"] = round(
        after[1000]["gateway_peak_rss_mib"] / after[10]["gateway_peak_rss_mib"], 3
    )
    note = "measured on a shared 2-core machine: compare the ratios of one run, not absolute times"
    rounds = {devices: rounds_for(devices) for devices in sorted(after)}
    details = {"runs": runs, "processes": PROCESSES, "rounds": rounds, "note": note, "intake": intake}
    path = write_result("round_scale", figures, details)
    print_table("round_scale", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
