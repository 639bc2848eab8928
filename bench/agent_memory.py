"""Benchmark ``agent_memory``: the RSS of a running device agent that trains the digits MLP, and where it goes.

A real ``tinyfed device run`` process (its own data file, insecure trust)
joins a real Mosquitto; a stand-in gateway publishes the model and five
training tasks in turn, and this process samples the agent's VmRSS from
/proc every 10 ms while it trains, installs and sends. Figures:
- ``agent_rss_mib``: RSS once the last update is receipted (a running,
  idle-between-rounds agent); ``agent_peak_rss_mib``: VmHWM, the peak
  while training; ``agent_sampled_max_rss_mib``: the largest sample.
- ``agent_rss_anon_mib`` (private: heap, arenas, stacks) and
  ``agent_rss_file_mib`` (pages of shared libraries, shareable);
- ``agent_rss_micro_backend_mib``: the same agent with ``[device] backend =
  "micro"`` (TFLite Micro's interpreter, the emulated board's), when installed;
- where it goes: a fresh interpreter importing, step by step, what the agent
  imports (the interpreter alone, numpy, paho-mqtt, cbor2, the wire, the
  interpreter backend, the trainer, the agent, numpy.random which the first
  task loads), each step's RSS increase (``import_*_mib``) and its private
  part (``import_*_anon_mib``); the agent's RSS minus the last step is its
  run-time memory (model, interpreter arena, data, numpy temporaries,
  threads' stacks);
- ``agent_floor_mib``: the RSS of a bare ``python`` that imported numpy and
  paho-mqtt (the first three steps): what no change to tinyfed can cut;
- ``details.running.packages_mapped``: the packages whose shared libraries
  the running agent has mapped (from /proc/PID/maps): cryptography is not
  among them until a secure aggregation round, nor another backend's.
The machine may be shared: RSS does not depend on load, times would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, write_result
from bench.transport import TOPICS, WAIT, Receipts, _link, _status_mib, digits_agent_files, status_snapshot
from edge_runtime import wire
from edge_runtime.model.backends import available_backends
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import publish_model

TASKS = 5

# Cumulative import steps, in the order the agent meets them; each prints the RSS after it.
STEPS = [
    ("interpreter", "pass"),
    ("numpy", "import numpy"),
    ("paho_mqtt", "import paho.mqtt.client"),
    ("cbor2_and_wire", "import edge_runtime.wire"),
    ("cli_and_device_run", "import tinyfed.cli, edge_runtime.commands.device_run"),
    ("model_backend", "from edge_runtime.model.backends import default_backend; default_backend()"),
    ("agent", "import edge_runtime.agent"),
    ("trainer", "import edge_runtime.train.trainer"),
    ("numpy_random", "import numpy.random"),  # a task's seeded generator; the agent's code imports it lazily
]
FLOOR_STEPS = 3  # the interpreter, numpy and paho-mqtt

_PROBE = """
import json, sys
def rss(field='VmRSS'):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
out = []
for name, code in json.loads(sys.argv[1]):
    exec(code)
    out.append([name, rss(), rss('RssAnon')])
print(json.dumps({"steps": out, "anon": rss('RssAnon'), "modules": sorted(sys.modules)}))
"""


def import_steps() -> dict[str, Any]:
    """RSS after each cumulative import step, in a fresh interpreter (the agent's own, same flags)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(STEPS)], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(done.stdout)
    steps: dict[str, float] = {}
    anon: dict[str, float] = {}
    previous = previous_anon = 0.0
    for name, rss, rss_anon in result["steps"]:
        steps[name], anon[name] = rss - previous, rss_anon - previous_anon
        previous, previous_anon = rss, rss_anon
    heavy = sorted({m.split(".")[0] for m in result["modules"]} & HEAVY)
    return {"increments_mib": steps, "increments_anon_mib": anon, "after_imports_mib": previous,
            "after_imports_anon_mib": result["anon"], "floor_mib": result["steps"][FLOOR_STEPS - 1][1],
            "heavy_packages_imported": heavy}  # fmt: skip


HEAVY = {"sklearn", "scipy", "pandas", "tensorflow", "torch", "cryptography", "matplotlib", "psutil", "tflite"}


def packages_mapped(pid: int) -> list[str]:
    """The installed packages (site-packages' top-level directories) whose shared libraries ``pid`` has mapped."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "/site-packages/" in fields[5]:
            found.add(fields[5].split("/site-packages/", 1)[1].split("/", 1)[0])
    return sorted(found)


def running_agent(broker: MosquittoProcess, workdir: Path, backend: str = "auto") -> dict[str, Any]:
    device = f"mem-{backend}"
    manifest, chunks, config = digits_agent_files(broker.url, workdir, device, 200, backend)
    gateway = _link(broker.url, f"gateway-{device}")
    receipts = Receipts(gateway, manifest)
    born = threading.Event()

    def on_presence(topic: str, payload: bytes) -> None:
        caps = wire.decode(payload, expect=wire.Presence).capabilities
        if caps is not None and caps.model_version == manifest.version:
            born.set()

    gateway.subscribe(TOPICS.presence(device), on_presence)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfed", "device", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            with contextlib.suppress(OSError):
                samples.append(_status_mib(proc.pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        assert gateway.wait_ready(WAIT)
        publish_model(gateway, TOPICS, manifest, chunks)
        assert born.wait(WAIT), "the agent did not install the model"
        installed = _status_mib(proc.pid, "VmRSS")
        sampler.start()
        for n in range(1, TASKS + 1):
            task = wire.Task(os.urandom(16), n, manifest.version, 5, 0.05, 0.01, int(time.time()) + 300)
            gateway.publish(TOPICS.task(device), wire.encode(task), timeout=WAIT)
            assert receipts.wait(n), f"the agent did not deliver its update for task {n}"
        stop.set()
        sampler.join()
        status = status_snapshot(proc.pid)  # one read: the peak, the RSS and its parts at one moment
        return {
            "agent_rss_mib": status["VmRSS"],
            # Private (heap, stacks, arenas) against file-backed (shared libraries' pages, shareable).
            "agent_rss_anon_mib": status["RssAnon"],
            "agent_rss_file_mib": status["RssFile"],
            "agent_threads": status["Threads"],
            "agent_peak_rss_mib": status["VmHWM"],
            "agent_sampled_max_rss_mib": max(samples, default=float("nan")),
            "agent_rss_model_installed_mib": installed,
            "samples": len(samples),
            "packages_mapped": packages_mapped(proc.pid),
        }
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        gateway.stop()


def main(full: bool = False) -> dict[str, float]:
    details: dict[str, Any] = {"imports": import_steps(), "tasks": TASKS}
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess(workdir=Path(tmp) / "broker") as broker:
        details["running"] = running_agent(broker, Path(tmp) / "auto")
        # The same agent on TFLite Micro's interpreter (the emulated board's): a smaller library to map.
        if "micro" in available_backends():
            details["running_micro"] = running_agent(broker, Path(tmp) / "micro", backend="micro")
    running, imports = details["running"], details["imports"]
    figures: dict[str, float] = {
        "agent_rss_mib": running["agent_rss_mib"],
        "agent_peak_rss_mib": running["agent_peak_rss_mib"],
        "agent_sampled_max_rss_mib": running["agent_sampled_max_rss_mib"],
        "agent_rss_anon_mib": running["agent_rss_anon_mib"],
        "agent_rss_file_mib": running["agent_rss_file_mib"],
        "agent_rss_after_imports_mib": imports["after_imports_mib"],
        "agent_rss_anon_after_imports_mib": imports["after_imports_anon_mib"],
        "agent_runtime_rss_mib": running["agent_rss_mib"] - imports["after_imports_mib"],
        "agent_floor_mib": imports["floor_mib"],
    }
    if "running_micro" in details:
        figures["agent_rss_micro_backend_mib"] = details["running_micro"]["agent_rss_mib"]
    for step, mib in imports["increments_mib"].items():
        figures[f"import_{step}_mib"] = mib
        figures[f"import_{step}_anon_mib"] = imports["increments_anon_mib"][step]
    path = write_result("agent_memory", figures, details)
    print_table("agent_memory", figures)
    print(f"  heavy packages imported on the device path: {imports['heavy_packages_imported'] or 'none'}")
    print(f"  packages with shared libraries mapped in the running agent: {', '.join(running['packages_mapped'])}")
    print(f"  -> {path}")
    return figures


if __name__ == "__main__":
    main()
