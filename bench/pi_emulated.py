"""Emulated-Pi figures beside the host's: install time, interpreter invoke, a local epoch, agent memory, agreement.

    sudo .venv/bin/python -m bench.pi_emulated        # writes bench/results/pi_emulated.json (about 5-10 min)

Not in ``tinyfed bench``'s suite: it needs root (chroot, mounts) and the userland scripts/pi-userland.sh builds.
The board is the arm64 userland under qemu-user with the CPU pinned to a Pi 4's Cortex-A72 and a Pi 5's
Cortex-A76: EMULATION, not a Pi. qemu translates every instruction on the host's x86 cores, so the times say how
much slower the emulated board is on this machine (a ratio), not how fast a Pi is; the memory is qemu's process
(the guest plus the translator and its code cache), an upper bound of what a Pi's process holds. Agreement is
what the emulated interpreter says against the host's on the conformance models: pinned, and with qemu's
default ``max`` CPU model (the trap the pin avoids).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result
from bench.pi_userland import CORES, INSTALL_SCRIPT, PREFIX, REPO, Userland, build_wheel, unavailable

PROBE = REPO / "bench" / "pi_probe.py"


def _device_data(folder: Path) -> Path:
    from edge_runtime.data.sources import load_digits

    train = load_digits(seed=0).train
    path = folder / "digits-train.npz"
    np.savez(path, x=train.x, y=train.y, classes=np.array(train.classes))
    return path


def _bundle(folder: Path) -> Path:
    from edge_runtime.transport.broker import free_port
    from gateway.pki import provision

    root = folder / "pki"
    provision.init(root, "bench", ["127.0.0.1"], port=free_port())
    provision.add_device(root, "pi-bench", make_archive=True)
    return root / "devices" / "pi-bench.tar.gz"


def _conformance_inputs(folder: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    from edge_runtime.data.sources import load_digits
    from edge_runtime.model.backends.litert import LitertBackend
    from edge_runtime.model.info import quantize_input
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model

    split = load_digits(seed=0)
    graph = build_model("mlp", split.train.x, split.train.classes, seed=0)
    model = write_graph(graph)
    x = quantize_input(graph, split.test.x)
    path = folder / "conformance-in.npz"
    np.savez(path, **{"model:digits_mlp": np.frombuffer(model, np.uint8), "x:digits_mlp": x})  # type: ignore[arg-type]
    host = {
        "digits_mlp": {
            "builtin": LitertBackend().load(model).run_batch(x)[0],
            "xnnpack": LitertBackend(xnnpack=True).load(model).run_batch(x)[0],
        }
    }
    return path, host


def _agreement(got: dict[str, np.ndarray], host: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, want in host.items():
        for kind in ("builtin", "xnnpack"):
            a, b = got[f"{kind}:{name}"], want[kind]
            out[f"{kind}_max_lsb"] = int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
            out[f"{kind}_argmax_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    return out


def main(full: bool = False) -> dict[str, float]:
    del full
    why = unavailable()
    if why:
        raise SystemExit(f"bench.pi_emulated: {why}")
    work = Path(tempfile.mkdtemp(prefix="tinyfed-pi-bench-"))
    kept = os.environ.get("PI_USERLAND_BOARD")  # a board installed before: pi-install.sh then only re-runs
    board = Userland(overlay=Path(kept) if kept else work / "board", pi=4, binds=[work])
    details: dict[str, Any] = {"emulation": "qemu-user (Debian bookworm arm64 userland); not a Raspberry Pi"}
    figures: dict[str, float] = {}
    try:
        wheel = build_wheel(work / "wheel")
        data = _device_data(work)
        t0 = time.monotonic()
        board.run(["bash", str(INSTALL_SCRIPT), "--bundle", str(_bundle(work)), "--from", str(wheel)], timeout=3600)
        figures["emulated_reinstall_s" if kept else "emulated_install_s"] = time.monotonic() - t0
        details["install"] = "scripts/pi-install.sh: venv + tinyfed[device]"

        host_out = work / "host.json"
        subprocess.run([sys.executable, str(PROBE), "figures", str(data), str(host_out)], check=True)
        host = json.loads(host_out.read_text())
        details["host"] = host
        figures["host_invoke_us"] = host["invoke_us"]
        figures["host_epoch_s"] = host["epoch_s"]
        figures["host_agent_rss_mib"] = host["rss_after_import_mib"]
        for pi, core in CORES.items():
            out = work / f"pi{pi}.json"
            Userland(board.overlay, pi=pi, binds=board.binds).run(
                [f"{PREFIX}/bin/python", str(PROBE), "figures", str(data), str(out)], timeout=1800
            )
            got = json.loads(out.read_text())
            assert got["qemu_cpu"] == core, got
            details[f"emulated_pi{pi}"] = got
            figures[f"emulated_pi{pi}_invoke_us"] = got["invoke_us"]
            figures[f"emulated_pi{pi}_epoch_s"] = got["epoch_s"]
            figures[f"emulated_pi{pi}_agent_rss_mib"] = got["rss_after_import_mib"]
            figures[f"emulated_pi{pi}_invoke_ratio_vs_host"] = got["invoke_us"] / host["invoke_us"]
            figures[f"emulated_pi{pi}_epoch_ratio_vs_host"] = got["epoch_s"] / host["epoch_s"]

        inputs, host_outputs = _conformance_inputs(work)
        for label, cpu in (("pinned_a72", None), ("max", "max")):
            out = work / f"conformance-{label}.npz"
            board.run([f"{PREFIX}/bin/python", str(PROBE), "conformance", str(inputs), str(out)], cpu=cpu)
            with np.load(out) as loaded:
                agreement = _agreement({k: loaded[k] for k in loaded.files}, host_outputs)
            details[f"conformance_{label}"] = agreement
            for key, value in agreement.items():
                figures[f"{label}_{key}"] = value
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_result("pi_emulated", figures, details)
    # Not a `tinyfed bench` name (it needs root and the userland): say how it was really run.
    payload = json.loads(path.read_text())
    payload["command"] = "sudo .venv/bin/python -m bench.pi_emulated"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    print_table("pi_emulated (EMULATION: qemu-user on this host, not a Pi)", figures)
    return figures


if __name__ == "__main__":
    main()
