"""The C firmware's ML code on Cortex-M: code size, RAM per model, instructions per inference and training step.

Builds firmware/ml for Cortex-M3 (soft float, QEMU mps2-an385) and Cortex-M4
(FPU, mps2-an386) with arm-none-eabi-gcc -Os, and runs its harness in
qemu-system-arm under semihosting with a TCG plugin counting the guest
instructions executed (firmware/ml/qemu/insn_count.c). Counts are
differential, so start-up and file I/O cancel: an inference is (N=6 runs -
N=1 run) / 5; an epoch of last-layer training is (2 epochs - 1 epoch), a step
that divided by the batches per epoch; the backbone pass that caches each
sample's features is (1 epoch on 2S samples - 1 epoch on S) less one epoch's
steps. Instructions, not cycles: QEMU does not model a pipeline or wait
states (a Cortex-M3/M4 runs about 1.2-1.5 cycles per instruction from
zero-wait memory). The counts are deterministic, so the shared machine's load
does not move them.

Models: the digits MLP (64-64-32-10) and the HAR 1D-CNN (128x9 windows, 6
classes; real UCI HAR windows when the shared data folder is present, else
synthetic windows of the same shape: the counts depend on the shape only).
RAM: the model's inference arena (greedy-planned activations), the arena a
training task of 64 samples at batch 32 needs (features cached, float
buffers), and the static model table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result

FIRMWARE_ML = Path(__file__).resolve().parents[1] / "firmware" / "ml"
MACHINES = {"m3": "mps2-an385", "m4": "mps2-an386"}
ARENA = 64 * 1024
TRAIN_SAMPLES = 64
BATCH = 32


def models() -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (model bytes, int8 samples in its input quantisation)."""
    from edge_runtime.data.sources import load_digits, load_source, shared_data_dir
    from edge_runtime.model.info import quantize_input
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model

    digits = load_digits(seed=0)
    mlp = build_model("mlp", digits.train.x, digits.train.classes, seed=0)
    out = {"digits_mlp": (write_graph(mlp), quantize_input(mlp, digits.train.x[: 2 * TRAIN_SAMPLES]))}
    if shared_data_dir() is not None:
        har = load_source("har")
        windows, classes = har.train.x[: 2 * TRAIN_SAMPLES], har.train.classes
    else:
        rng = np.random.default_rng(1)
        t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
        windows = np.sin(t[None, :, None] + rng.uniform(0, 6.3, (2 * TRAIN_SAMPLES, 1, 9))).astype(np.float32)
        classes = [str(i) for i in range(6)]
    cnn = build_model("cnn1d", windows, classes, seed=0)
    out["har_cnn1d"] = (write_graph(cnn), quantize_input(cnn, windows))
    return out


def build(folder: Path) -> None:
    subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_ML), f"BUILD={folder}", f"ARENA={ARENA}", "arm", "qemu"],
        check=True,
        capture_output=True,
    )


def code_size(folder: Path, core: str) -> dict[str, int]:
    """text/data/bss of the ML library alone (no platform, no libm: those come with the firmware's link)."""
    text = subprocess.run(
        ["arm-none-eabi-size", "-t", str(folder / core / "libml.a")], capture_output=True, text=True, check=True
    ).stdout
    t, d, b = (int(v) for v in text.splitlines()[-1].split()[:3])
    return {"text": t, "data": d, "bss": b}


def run_qemu(folder: Path, core: str, work: Path, *args: str) -> tuple[int, dict[str, str]]:
    """Run the harness with ``args`` on the board; returns (instructions executed, its key=value output)."""
    semihosting = ",".join(["enable=on", "target=native", "arg=ml_host", *(f"arg={a}" for a in args)])
    done = subprocess.run(
        [
            "qemu-system-arm",
            "-M",
            MACHINES[core],
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-semihosting-config",
            semihosting,
            "-kernel",
            str(folder / core / "ml_qemu.elf"),
            "-plugin",
            str(folder / "insn_count.so"),
            "-d",
            "plugin",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    found = re.search(r"insns=(\d+)", done.stdout + done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"qemu {core} {args[0]} failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
        )
    values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return int(found.group(1)), values


def measure(folder: Path, core: str, work: Path, name: str, model: bytes, x: np.ndarray) -> dict[str, Any]:
    (work / "m.tflite").write_bytes(model)
    x[:TRAIN_SAMPLES].astype(np.int8).tofile(work / "x.bin")
    x[: 2 * TRAIN_SAMPLES].astype(np.int8).tofile(work / "x2.bin")
    labels = (np.arange(2 * TRAIN_SAMPLES) % 6).astype(np.uint8)
    labels[:TRAIN_SAMPLES].tofile(work / "y.bin")
    labels.tofile(work / "y2.bin")

    def train(epochs: int, samples: int) -> tuple[int, dict[str, str]]:
        xs, ys = ("x.bin", "y.bin") if samples == TRAIN_SAMPLES else ("x2.bin", "y2.bin")
        hyper = [str(epochs), str(BATCH), "0.05", "0.9", "0", "0", "1", "7", "-", "d"]
        return run_qemu(folder, core, work, "train", "m.tflite", xs, ys, str(samples), *hyper)

    # The harness reads INPUTS of exactly N samples: write the N=1 and N=6 files.
    x[:1].astype(np.int8).tofile(work / "x1.bin")
    x[:6].astype(np.int8).tofile(work / "x6.bin")
    one = run_qemu(folder, core, work, "infer", "m.tflite", "x1.bin", "1", "o")[0]
    six = run_qemu(folder, core, work, "infer", "m.tflite", "x6.bin", "6", "o")[0]
    per_inference = (six - one) / 5
    e1, values = train(1, TRAIN_SAMPLES)
    e2, _ = train(2, TRAIN_SAMPLES)
    s2, _ = train(1, 2 * TRAIN_SAMPLES)
    batches = -(-TRAIN_SAMPLES // BATCH)
    per_epoch = e2 - e1
    per_feature = (s2 - e1 - per_epoch) / TRAIN_SAMPLES
    _, info = run_qemu(folder, core, work, "info", "m.tflite")
    return {
        "insns_per_inference": per_inference,
        "insns_per_train_step": per_epoch / batches,
        "insns_per_feature_pass": per_feature,
        "arena_bytes": int(info["arena_bytes"]),
        "train_bytes": int(values["train_bytes"]),
        "train_status": values.get("train_status"),
    }


def main(full: bool = False) -> dict[str, float]:
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        raise SystemExit("needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (apt-get install)")
    figures: dict[str, float] = {}
    details: dict[str, Any] = {"arena_compiled": ARENA, "train_samples": TRAIN_SAMPLES, "batch": BATCH, "cores": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder, work = Path(tmp) / "build", Path(tmp)
        build(folder)
        chosen = models()
        for core in ("m3", "m4"):
            size = code_size(folder, core)
            figures[f"{core}_text_bytes"] = float(size["text"])
            figures[f"{core}_static_ram_bytes"] = float(size["bss"] + size["data"] - ARENA)
            details["cores"][core] = {"size": size, "models": {}}
            for name, (model, x) in chosen.items():
                got = measure(folder, core, work, name, model, x)
                details["cores"][core]["models"][name] = got
                figures[f"{name}_{core}_insns_per_inference"] = got["insns_per_inference"]
                figures[f"{name}_{core}_insns_per_train_step"] = got["insns_per_train_step"]
                figures[f"{name}_arena_bytes"] = float(got["arena_bytes"])
                figures[f"{name}_train_bytes"] = float(got["train_bytes"])
                print(f"{core} {name}: {got}", flush=True)
    path = write_result("firmware_ml", figures, details)
    print_table("firmware_ml", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
