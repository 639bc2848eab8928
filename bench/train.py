"""Benchmark ``train``: on-device training speed, memory and accuracy; interpreter latency per backend.

Each model trains in its own subprocess so its peak RSS is its own. Figures:
samples/s of the trainer, RSS after import and peak RSS while training,
int8 accuracy per backend, invoke latency per backend (ratio against
ai-edge-litert), and the same architecture trained in PyTorch on the CPU in
the same run (``torch_speed_ratio`` = tinyfed samples/s / PyTorch samples/s).
tflite-runtime needs numpy<2, so it is measured in ``.venv-np1`` when that
environment exists (scripts/test.sh creates it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, rss_mib, write_result

ROOT = Path(__file__).resolve().parents[1]
NP1_PYTHON = ROOT / ".venv-np1" / "bin" / "python"
SETTINGS = {"mlp": ("digits", 20, 0.05), "cnn1d": ("har", 3, 0.02)}
BATCH = 32
INVOKES = 1000


def _worker(arch: str, model_out: str) -> dict[str, Any]:
    """Runs in a fresh process: import, build, train, score, and report memory."""
    import numpy as np

    from edge_runtime.data.sources import load_source
    from edge_runtime.model.backends import available_backends, get_backend
    from edge_runtime.model.info import quantize_input
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model
    from edge_runtime.train.evaluate import accuracy, int8_predictions
    from edge_runtime.train.trainer import TrainConfig, Trainer

    rss_import = rss_mib()
    data, epochs, lr = SETTINGS[arch]
    split = load_source(data)
    rss_data = rss_mib()
    graph = build_model(arch, split.train.x, split.train.classes, seed=0)
    x_train = quantize_input(graph, split.train.x)
    x_test = quantize_input(graph, split.test.x)
    trainer = Trainer(graph, config=TrainConfig(epochs=epochs, learning_rate=lr, batch_size=BATCH, seed=0))
    t0 = time.perf_counter()
    trainer.fit(x_train, split.train.y)
    seconds = time.perf_counter() - t0
    peak = rss_mib("VmHWM")
    float_acc = accuracy(trainer.predict_float(trainer.features(x_test)), split.test.y)
    model = write_graph(trainer.export())
    Path(model_out).write_bytes(model)
    np.save(model_out + ".x.npy", x_test)
    np.save(model_out + ".y.npy", split.test.y)
    int8 = {
        name: accuracy(int8_predictions(get_backend(name), model, x_test), split.test.y)
        for name in available_backends()
    }
    return {
        "arch": arch,
        "data": data,
        "epochs": epochs,
        "train_samples": len(split.train),
        "train_seconds": seconds,
        "samples_per_s": epochs * len(split.train) / seconds,
        "rss_after_import_mib": rss_import,
        "rss_after_data_mib": rss_data,
        "peak_rss_mib": peak,
        "float_accuracy": float_acc,
        "int8_accuracy": int8,
        "parameters": int(sum(v.size for _, layer in trainer.tail.trainable() for v in layer.params().values())),
    }


def _latency_worker(model_path: str) -> dict[str, Any]:
    """Mean invoke time per installed backend, plus int8 accuracy on the saved test inputs."""
    import numpy as np

    from edge_runtime.model.backends import available_backends, get_backend

    model = Path(model_path).read_bytes()
    x = np.load(model_path + ".x.npy")
    y = np.load(model_path + ".y.npy")
    out: dict[str, Any] = {}
    for name in available_backends():
        session = get_backend(name).load(model)
        session.set_input(x[:1])
        for _ in range(50):
            session.invoke()
        t0 = time.perf_counter()
        for _ in range(INVOKES):
            session.invoke()
        us = (time.perf_counter() - t0) / INVOKES * 1e6
        acc = float((session.run_batch(x)[0].reshape(len(x), -1).argmax(1) == y).mean())
        out[name] = {"invoke_us": us, "int8_accuracy": acc, "arena_bytes": session.arena_bytes}
    return out


def _torch_samples_per_s(arch: str) -> float | None:
    try:
        import numpy as np
        import torch
    except ImportError:
        return None
    from edge_runtime.data.sources import load_source

    data, epochs, lr = SETTINGS[arch]
    split = load_source(data)
    x = torch.tensor(split.train.x, dtype=torch.float32)
    x = (x - x.mean(dim=tuple(range(x.dim() - 1)))) / (x.std(dim=tuple(range(x.dim() - 1))) + 1e-6)
    y = torch.tensor(split.train.y)
    nn = torch.nn
    if arch == "mlp":
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    else:
        x = x.permute(0, 2, 1)  # [N, channels, steps]
        model = nn.Sequential(
            nn.Conv1d(9, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, 64, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(64, 6),
        )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.tensor(gen.permutation(len(y)))
        for start in range(0, len(y), BATCH):
            idx = order[start : start + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return epochs * len(y) / (time.perf_counter() - t0)


def _run_json(python: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [python, "-m", "bench.train", *args], capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(full: bool = False) -> dict[str, float]:
    from edge_runtime.data.sources import shared_data_dir

    archs = ["mlp"] + (["cnn1d"] if shared_data_dir() is not None else [])
    details: dict[str, Any] = {}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            model_path = str(Path(tmp) / f"{arch}.tflite")
            run = _run_json(sys.executable, "--worker", arch, model_path)
            run["latency"] = _run_json(sys.executable, "--latency", model_path)
            if NP1_PYTHON.exists():
                run["latency"].update(_run_json(str(NP1_PYTHON), "--latency", model_path))
            run["torch_samples_per_s"] = _torch_samples_per_s(arch)
            details[arch] = run
    mlp = details["mlp"]
    accs = {**mlp["int8_accuracy"], **{k: v["int8_accuracy"] for k, v in mlp["latency"].items()}}
    figures["digits_mlp_int8_accuracy_min"] = min(accs.values())
    figures["digits_mlp_float_accuracy"] = mlp["float_accuracy"]
    figures["train_samples_per_s"] = mlp["samples_per_s"]
    figures["agent_rss_mib"] = mlp["rss_after_import_mib"]
    figures["train_peak_rss_mib"] = mlp["peak_rss_mib"]
    figures["train_rss_after_data_mib"] = mlp["rss_after_data_mib"]
    if mlp["torch_samples_per_s"]:
        figures["torch_speed_ratio"] = mlp["samples_per_s"] / mlp["torch_samples_per_s"]
    for arch, run in details.items():
        base = run["latency"].get("litert", {}).get("invoke_us")
        for backend, lat in run["latency"].items():
            figures[f"{arch}_invoke_us_{backend}"] = lat["invoke_us"]
            if base:
                figures[f"{arch}_invoke_ratio_vs_litert_{backend}"] = lat["invoke_us"] / base
    if "cnn1d" in details:
        cnn = details["cnn1d"]
        figures["har_cnn1d_int8_accuracy_min"] = min(v["int8_accuracy"] for v in cnn["latency"].values())
        figures["har_cnn1d_train_samples_per_s"] = cnn["samples_per_s"]
        figures["har_cnn1d_train_peak_rss_mib"] = cnn["peak_rss_mib"]
        figures["har_cnn1d_rss_after_data_mib"] = cnn["rss_after_data_mib"]
        if cnn["torch_samples_per_s"]:
            figures["torch_speed_ratio_cnn1d"] = cnn["samples_per_s"] / cnn["torch_samples_per_s"]
    path = write_result("train", figures, details)
    print_table("train", figures)
    print(f"  -> {path}")
    return figures


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--latency":
        print(json.dumps(_latency_worker(sys.argv[2])))
    else:
        main(full="--full" in sys.argv)
