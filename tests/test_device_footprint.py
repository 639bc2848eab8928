"""What a running ``tinyfed device run`` holds in memory: only the interpreter backend it was given, no cryptography
until a secure aggregation round needs it (docs/operations.md, "Where a device's memory goes").

Read from the real process's /proc/PID/maps (the shared libraries it has loaded), not from a mock: a module
imported at start that only a rare path needs costs every device its resident pages for as long as it runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.agent_memory import packages_mapped
from edge_runtime.model.backends import available_backends
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.topics import Topics
from tests.helpers import INSECURE_TOML, watch_presence

WAIT = 60.0  # start-up imports numpy and an interpreter on a shared machine: an upper bound only
LIBRARIES = {"litert": "ai_edge_litert", "micro": "tflite_micro"}  # each backend's package, as maps names it
INSTALLED = [name for name in available_backends() if name in LIBRARIES]


def write_device(folder: Path, url: str, backend: str) -> Path:
    """A device on a small NPZ file (the named digits set would load scikit-learn into the process measured)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "local.npz", x=rng.random((40, 64), dtype=np.float32), y=np.arange(40) % 10)
    config = folder / "device.toml"
    config.write_text(
        f'[device]\nid = "fp-{backend}"\nfederation = "fp"\nstorage = "{folder / "storage"}"\nbackend = "{backend}"\n'
        f'[data]\nsource = "{folder / "local.npz"}"\n[broker]\nurl = "{url}"\n{INSECURE_TOML}'
    )
    return config


@pytest.mark.skipif(not INSTALLED, reason="neither LiteRT nor TFLite Micro is installed")
@pytest.mark.parametrize("backend", INSTALLED)
def test_a_running_device_maps_its_own_backend_only_and_no_cryptography(
    broker: MosquittoProcess, tmp_path: Path, backend: str
) -> None:
    watcher, seen = watch_presence(broker, Topics("fp").presence(f"fp-{backend}"), "watcher")
    assert watcher.wait_ready(WAIT)
    config = write_device(tmp_path, broker.url, backend)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfed", "device", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Born: the agent is made (its secure aggregation participant included) and connected.
        seen.wait_until(lambda got: any(p.online for p in got), WAIT, "the device's birth message")
        mapped = packages_mapped(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
        watcher.stop()
    assert proc.returncode == 0, err[-2000:]
    assert "numpy" in mapped and LIBRARIES[backend] in mapped, mapped  # the reading reaches the process's libraries
    others = {package for name, package in LIBRARIES.items() if name != backend}
    assert not others & set(mapped), f"a {backend} device loaded another interpreter: {mapped}"
    assert "cryptography" not in mapped, mapped


def test_the_secure_aggregation_participant_loads_cryptography_only_for_a_session() -> None:
    probe = """
import json, sys
from edge_runtime.secagg.participant import SecAggParticipant
before = "cryptography" in sys.modules
from edge_runtime.secagg import DeviceSession, check_threshold
print(json.dumps([before, "cryptography" in sys.modules, DeviceSession.__module__, check_threshold.__name__]))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=WAIT, check=True)
    before, after, module, name = json.loads(done.stdout)
    assert (before, after) == (False, True)
    assert (module, name) == ("edge_runtime.secagg.device", "check_threshold")


def test_reading_and_writing_a_model_loads_only_the_schema_modules_it_names() -> None:
    probe = """
import json, sys
import numpy as np
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
graph = build_model("mlp", np.random.default_rng(0).random((50, 64), dtype=np.float32), ["a", "b", "c"], seed=0)
data = write_graph(graph)
same = write_graph(read_graph(data)) == data
import tflite
def loaded():
    return sum(name.startswith("tflite.") for name in sys.modules)
lazy = loaded()
kinds = [isinstance(tflite.Model, type), isinstance(tflite.SubGraph, type), callable(tflite.SubGraphStart)]
version = tflite.__version__  # no module's name begins it: the real __init__ runs
print(json.dumps([same, lazy, kinds, loaded(), isinstance(tflite.Model, type), tflite.Model.__module__, version]))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=WAIT, check=True)
    same, lazy, kinds, whole, still_a_class, module, version = json.loads(done.stdout)
    assert same  # the round trip is byte-identical through the lazily loaded schema
    assert 0 < lazy < whole / 4, (lazy, whole)  # a reader loads the few tables it reads, not all of them
    assert kinds == [True, True, True]  # names bind as the package's star imports bind them: classes, functions
    assert whole > 150 and still_a_class and module == "tflite.Model" and version


def test_every_name_of_the_schema_package_resolves_lazily_to_what_the_whole_package_binds() -> None:
    describe = """
import json, os, sys
{setup}
import tflite
def describe(v):
    return [getattr(v, "__module__", None) or type(v).__name__, getattr(v, "__qualname__", repr(v)[:60])]
names = {names} or [k for k in vars(tflite) if k[0] != "_"]
modules = [f[:-3] for f in os.listdir(os.path.dirname(tflite.__file__)) if f[0].isupper() and f.endswith(".py")]
prefixed = [k for k in names if any(k.startswith(m) for m in modules)]  # named after their module: looked up first
out = {{k: describe(getattr(tflite, k)) for k in prefixed}}
lazy = "__version__" not in vars(tflite)  # the real __init__ (which sets it) has not run for any of them
out |= {{k: describe(getattr(tflite, k)) for k in names if k not in out}}  # Start, End, np...: the real __init__
print(json.dumps([lazy, out]))
"""
    _, whole = json.loads(_run(describe.format(setup="", names="None")))
    lazy, resolved = json.loads(_run(describe.format(setup="import edge_runtime.model", names=sorted(whole))))
    assert len(whole) > 1000 and resolved == whole
    assert lazy


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=True).stdout


def test_threads_asking_for_schema_names_at_once_get_the_classes_without_the_whole_package() -> None:
    probe = """
import json, threading
import edge_runtime.model
import tflite
names = ["Model", "SubGraph", "Tensor", "Buffer", "Operator", "OperatorCode", "QuantizationParameters",
         "FullyConnectedOptions", "Conv2DOptions", "SoftmaxOptions", "ReshapeOptions", "Metadata"] * 8
got = [None] * len(names)
start = threading.Barrier(len(names))
def ask(i):
    start.wait()
    got[i] = getattr(tflite, names[i])
threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(names))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps([[g.__module__, g.__name__] for g in got] + ["__version__" in vars(tflite)]))
"""
    *got, whole = json.loads(_run(probe))
    assert got == [[f"tflite.{n}", n] for n in ["Model", "SubGraph", "Tensor", "Buffer", "Operator", "OperatorCode",
                   "QuantizationParameters", "FullyConnectedOptions", "Conv2DOptions", "SoftmaxOptions",
                   "ReshapeOptions", "Metadata"] * 8]  # fmt: skip
    assert whole is False
