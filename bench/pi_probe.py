"""What runs on both sides of the emulated-Pi comparison: the host's venv and the Pi userland's /opt/tinyfed.

Run as a script (``python bench/pi_probe.py conformance IN.npz OUT.npz`` or ``figures DATA.npz OUT.json``),
so inside the userland it imports tinyfed from the venv a Pi owner installed, never from the checkout: the
directory on ``sys.path`` is ``bench/``, and nothing here imports ``bench``. The same code on both sides makes
the figures comparable: only the CPU (real x86-64 or emulated Cortex-A72/A76) differs.

``conformance``: IN holds ``model:NAME`` (the .tflite bytes) and ``x:NAME`` (int8 inputs); OUT gets each model's
outputs from tinyfed's litert backend as a device uses it (no delegate) and with ai-edge-litert's default
XNNPACK delegate (what qemu's default CPU model gets wrong).
``figures``: interpreter invoke time, one local training epoch, the agent's resident memory.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

INVOKES = 200  # single-sample invokes timed after a warm-up (emulation is ~20x slower: kept small)


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory from /proc/self/status (under qemu-user: qemu's, guest and translator)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def where() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("Model", "model name")):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "qemu_cpu": os.environ.get("QEMU_CPU", ""),
        "cpuinfo_model": model,
        "emulated": os.environ.get("PI_USERLAND", ""),
    }


def conformance(inputs: Path, output: Path) -> None:
    import numpy as np

    from edge_runtime.model.backends import available_backends, get_backend
    from edge_runtime.model.backends.base import Backend

    data = np.load(inputs)
    names = sorted(key.split(":", 1)[1] for key in data.files if key.startswith("model:"))
    # The device's interpreter as it uses it (litert on 64-bit, tflite-runtime on 32-bit ARM), and XNNPACK.
    installed = available_backends()
    device = next(name for name in ("litert", "tflite-runtime") if name in installed)
    backends: dict[str, Backend] = {"builtin": get_backend(device)}
    if device == "litert":
        from edge_runtime.model.backends.litert import LitertBackend

        backends["xnnpack"] = LitertBackend(xnnpack=True)
    out: dict[str, Any] = {}
    for name in names:
        model = data[f"model:{name}"].tobytes()
        x = data[f"x:{name}"]
        for label, backend in backends.items():
            out[f"{label}:{name}"] = backend.load(model).run_batch(x)[0]
    out["where"] = np.array(json.dumps({**where(), "backend": device}))
    np.savez(output, **out)


def figures(data_file: Path, output: Path) -> None:
    """The device's costs on its own CPU: what an agent holds once loaded, an invoke, an epoch of training."""
    rss_start = _rss_mib()
    import numpy as np

    from edge_runtime.agent import DeviceAgent  # noqa: F401  (what `tinyfed device run` imports and holds)
    from edge_runtime.model.backends import available_backends, get_backend
    from edge_runtime.model.info import quantize_input
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model
    from edge_runtime.train.trainer import TrainConfig, Trainer

    rss_import = _rss_mib()
    data = np.load(data_file)
    x, y = data["x"].astype(np.float32), data["y"]
    classes = [str(c) for c in data["classes"]]
    graph = build_model("mlp", x, classes, seed=0)
    model = write_graph(graph)
    backend = next(name for name in ("litert", "tflite-runtime") if name in available_backends())
    session = get_backend(backend).load(model)
    xq = quantize_input(graph, x)
    session.set_input(xq[:1])
    for _ in range(20):
        session.invoke()
    t0 = time.perf_counter()
    for _ in range(INVOKES):
        session.invoke()
    invoke_us = (time.perf_counter() - t0) / INVOKES * 1e6
    rss_model = _rss_mib()
    trainer = Trainer(graph, config=TrainConfig(epochs=1, learning_rate=0.05, batch_size=32, seed=0))
    t0 = time.perf_counter()
    trainer.fit(xq, y)
    epoch_s = time.perf_counter() - t0
    result = {
        **where(),
        "backend": backend,
        "invoke_us": invoke_us,
        "epoch_s": epoch_s,
        "epoch_samples": len(x),
        "rss_python_mib": rss_start,
        "rss_after_import_mib": rss_import,
        "rss_with_model_mib": rss_model,
        "peak_rss_mib": _rss_mib("VmHWM"),
    }
    output.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "conformance":
        conformance(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 3 and argv[0] == "figures":
        figures(Path(argv[1]), Path(argv[2]))
    else:
        print("usage: pi_probe.py conformance IN.npz OUT.npz | figures DATA.npz OUT.json", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
