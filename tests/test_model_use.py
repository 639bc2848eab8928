"""The model as a user meets it: built from their sample, used for predictions, exported from the hub.

``tinyfed`` runs as a real subprocess on files the test writes; the Python API runs on every installed
interpreter backend; the export reads a running gateway's store.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.data.errors import ShapeError
from edge_runtime.data.sources import load_digits
from edge_runtime.inference import Predictor
from edge_runtime.model.backends import available_backends
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.errors import ModelError
from edge_runtime.model.info import ModelInfo, quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.evaluate import int8_predictions
from edge_runtime.train.trainer import TrainConfig, Trainer
from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.service import Gateway

from .federation import ManualDevice, gateway_config, small_update
from .helpers import wait_for

needs_backend = pytest.mark.skipif(not available_backends(), reason="no interpreter backend installed")


def tinyfed(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinyfed", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)  # fmt: skip


def write_csv(path: Path, x: np.ndarray, labels: list[object] | None, header: list[str] | None = None) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        for i, row in enumerate(x.reshape(len(x), -1)):
            writer.writerow([*(f"{v:.9g}" for v in row), *([labels[i]] if labels is not None else [])])
    return path


@pytest.fixture(scope="module")
def trained_digits() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A digits MLP trained for a few epochs (a model worth predicting with), and the test split."""
    from edge_runtime.train.build import build_model

    digits = load_digits(seed=0)
    graph = build_model("mlp", digits.train.x, digits.train.classes, seed=0)
    trainer = Trainer(graph, config=TrainConfig(epochs=5, learning_rate=0.05, seed=0))
    trainer.fit(quantize_input(graph, digits.train.x), digits.train.y)
    return write_graph(trainer.export()), digits.test.x, digits.test.y


# -- model build from a user's sample ---------------------------------------------------------------------------
@needs_backend
def test_build_lists_the_classes_it_learned_and_warns_about_an_absent_one(tmp_path: Path) -> None:
    digits = load_digits(seed=0).train
    keep = digits.y != 3
    sample = write_csv(tmp_path / "hub.csv", digits.x[keep], digits.y[keep].tolist(),
                       [*(f"px{i}" for i in range(64)), "digit"])  # fmt: skip
    model = tmp_path / "m.tflite"
    run = tinyfed("model", "build", "--arch", "mlp", "--data", sample, "--label-column", "digit", "--out", model)
    assert run.returncode == 0, run.stderr
    assert f"10 classes learned from {int(keep.sum())} samples of {sample} column 64 ('digit')" in run.stdout
    lines = run.stdout.splitlines()
    assert any(ln.split() == ["3", "3", "0", "(none", "in", "the", "sample)"] for ln in lines)
    assert any(ln.split() == ["7", "7", str(int((digits.y == 7).sum()))] for ln in lines)
    assert "tinyfed: warning:" in run.stderr and "labels 0..9 expected, 3 absent in this sample" in run.stderr
    info = ModelInfo.from_graph(read_graph(model.read_bytes()))
    assert info.classes == [str(i) for i in range(10)] and len(info.input_mean) == 64
    np.testing.assert_allclose(info.input_mean, digits.x[keep].mean(axis=0), atol=1e-4)  # from this sample
    shown = tinyfed("model", "inspect", model).stdout
    assert "classes (10): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in shown and "input normalisation over 64 features" in shown

    # Every class named: no warning when none is absent, and the declared order is the output order.
    named = tinyfed("model", "build", "--arch", "mlp", "--data", sample, "--label-column", "digit",
                    "--classes", "9,8,7,6,5,4,3,2,1,0", "--out", model)  # fmt: skip
    assert named.returncode == 0 and ModelInfo.from_graph(read_graph(model.read_bytes())).classes[0] == "9"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label-column", "activity"], r"label_column 'activity' is not in the header \(a, b, label\)"),
        (["--arch", "cnn1d"], r"cnn1d takes windows \[samples, steps, channels\], these samples are \[2\]"),
        (["--classes", "x"], r"column 2 \('label'\) \(against --classes\): labels \['y'\] are not among the classes"),
        (["--window", "3x1"], r"samples of 2 values do not make windows of --window 3x1 \(3 values\)"),
        (["--window", "two"], r"--window 'two': expected STEPSxCHANNELS"),
    ],
)
def test_build_refusals_name_the_file_and_column_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    sample = tmp_path / "s.csv"
    sample.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    arch = [] if "--arch" in args else ["--arch", "mlp"]
    run = tinyfed("model", "build", *arch, "--data", sample, *args, "--out", tmp_path / "m.tflite")
    assert run.returncode == 2, run.stderr
    assert "tinyfed: error:" in run.stderr and "Traceback" not in run.stderr
    assert re.search(message, run.stderr), run.stderr
    assert args == ["--window", "two"] or str(sample) in run.stderr  # an option's own error names the option


@needs_backend
def test_windows_from_a_csv_and_an_npz_are_the_same_model_input(tmp_path: Path, sensor_windows: np.ndarray) -> None:
    """docs/data.md's layout: a CSV row holds a window step by step, all channels of a step together."""
    windows = sensor_windows[:60, :32, :3]  # [60, 32, 3]
    labels = (windows[:, :, 0].mean(axis=1) > 0).astype(int)
    np.savez(tmp_path / "w.npz", x=windows, y=labels)
    flat = write_csv(tmp_path / "w.csv", windows.reshape(60, -1), labels.tolist())
    first_row = np.array(flat.read_text().splitlines()[0].split(",")[:4], np.float32)
    assert first_row.tolist() == [*windows[0, 0, :3].tolist(), windows[0, 1, 0]]  # step 0's 3 channels, then step 1
    from_npz, from_csv = tmp_path / "npz.tflite", tmp_path / "csv.tflite"
    assert tinyfed("model", "build", "--arch", "cnn1d", "--data", tmp_path / "w.npz", "--out", from_npz).returncode == 0
    run = tinyfed("model", "build", "--arch", "cnn1d", "--data", flat, "--window", "32x3", "--out", from_csv)
    assert run.returncode == 0, run.stderr
    assert "input [32, 3]" in run.stdout and "each of its 3 channels" in run.stdout
    npz_info, csv_info = (ModelInfo.from_graph(read_graph(f.read_bytes())) for f in (from_npz, from_csv))
    assert csv_info.input_mean == npz_info.input_mean and csv_info.input_std == npz_info.input_std
    predictor = Predictor(from_csv)
    assert predictor.input_shape == (32, 3)
    probs = predictor.predict_proba(windows)
    np.testing.assert_array_equal(probs, predictor.predict_proba(windows.reshape(60, -1)))  # a flat row is a window
    np.testing.assert_array_equal(probs, Predictor(from_npz, predictor.backend).predict_proba(windows))


# -- the Python API, on every backend ---------------------------------------------------------------------------
def test_predictor_applies_the_models_normalisation_on_every_backend(
    trained_digits: tuple[bytes, np.ndarray, np.ndarray], backend: Backend, tmp_path: Path
) -> None:
    model, x, y = trained_digits
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    predictor = Predictor(path, backend=backend)
    assert predictor.classes == [str(i) for i in range(10)] and predictor.input_shape == (64,)
    # The same int8 scores as the trainer's own evaluation path, from raw pixels (0..16), not normalised ones.
    graph = read_graph(model)
    expected = int8_predictions(backend, model, quantize_input(graph, x)).argmax(axis=1)
    assert predictor.predict_index(x).tolist() == expected.tolist()
    labels = predictor.predict(x)
    assert labels.dtype.kind == "U" and (labels == y.astype(str)).mean() > 0.85
    probs = predictor.predict_proba(x)
    assert probs.shape == (len(x), 10) and np.allclose(probs.sum(axis=1), 1.0, atol=0.05)
    assert predictor.predict(x[0]).tolist() == [labels[0]]  # one sample, without the batch axis
    assert predictor.predict(x[0].reshape(8, 8)).tolist() == [labels[0]]  # 8x8 pixels: the same 64 inputs
    with pytest.raises(ShapeError, match=r"pixels: samples of 63 values .* takes 64"):
        predictor.predict(x[:, :63], where="pixels")


def test_predictor_names_a_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"gone\.tflite: no such model file"):
        Predictor(tmp_path / "gone.tflite")


# -- tinyfed model predict ------------------------------------------------------------------------------------
@needs_backend
def test_predict_prints_accuracy_and_confusion_and_writes_one_row_per_sample(
    trained_digits: tuple[bytes, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, y = trained_digits
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    names = y.astype(str).tolist()
    names[0] = "cat"  # a label the model does not know
    data = write_csv(tmp_path / "field.csv", x, names, [*(f"px{i}" for i in range(64)), "digit"])
    out = tmp_path / "predictions.csv"
    run = tinyfed("model", "predict", "--model", path, "--data", data, "--out", out)
    assert run.returncode == 0, run.stderr
    graph = read_graph(model)
    backend = Predictor(path).backend
    predicted = int8_predictions(backend, model, quantize_input(graph, x)).argmax(axis=1)
    correct = int((predicted.astype(str) == np.array(names)).sum())
    assert f"accuracy {correct / len(x):.4f} ({correct} of {len(x)}); labels: {data} column 64 ('digit')" in run.stdout
    assert "labels ['cat'] are not classes of the model: their 1 samples count as wrong" in run.stdout
    table = run.stdout.split("confusion matrix (rows: true class, columns: predicted class):\n")[1].splitlines()
    assert table[0].split() == [str(i) for i in range(10)]
    rows = {ln.split()[0]: [int(v) for v in ln.split()[1:]] for ln in table[1:12] if ln.strip()}
    for c in range(10):
        assert rows[str(c)] == np.bincount(predicted[np.array(names) == str(c)], minlength=10).tolist()
    assert sum(rows["cat"]) == 1
    with out.open() as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(x) and list(written[0])[:3] == ["sample", "label", "predicted"]
    assert [r["predicted"] for r in written] == predicted.astype(str).tolist() and written[0]["label"] == "cat"
    assert abs(sum(float(written[5][f"p_{c}"]) for c in range(10)) - 1.0) < 0.05

    # The same CSV without its label column: as wide as the model's input, so predictions only.
    bare = write_csv(tmp_path / "bare.csv", x, None)
    only = tinyfed("model", "predict", "--model", path, "--data", bare, "--backend", backend.name)
    assert only.returncode == 0, only.stderr
    assert "no labels (no label column): predictions only" in only.stdout and "\naccuracy" not in only.stdout
    counts = np.bincount(predicted, minlength=10)
    assert only.stdout.splitlines()[-1] == "predicted: " + ", ".join(f"{c} {n}" for c, n in enumerate(counts) if n)


@needs_backend
def test_predict_refusals_name_what_is_wrong_and_exit_2(
    trained_digits: tuple[bytes, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, y = trained_digits
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    narrow = write_csv(tmp_path / "narrow.csv", x[:, :60], y.tolist())
    cases = {
        "model": (["--model", tmp_path / "none.tflite", "--data", narrow], "none.tflite: no such model file"),
        "shape": (["--model", path, "--data", narrow], f"{narrow}: samples of 60 values (shape [60]), the model's "
                  "input 'input' takes 64"),
        "data": (["--model", path, "--data", tmp_path / "gone.csv"], "gone.csv: no such csv file"),
        "backend": (["--model", path, "--data", narrow, "--backend", "tpu"], "unknown backend 'tpu'"),
    }  # fmt: skip
    for what, (args, message) in cases.items():
        run = tinyfed("model", "predict", *args)
        assert run.returncode == 2, (what, run.stderr)
        assert message in run.stderr and "Traceback" not in run.stderr, (what, run.stderr)


# -- tinyfed gateway export -----------------------------------------------------------------------------------
def write_toml(path: Path, settings: dict[str, object]) -> Path:
    lines = []
    for table, values in settings.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]  # type: ignore[attr-defined]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_export_writes_the_current_or_a_chosen_version_while_the_gateway_runs(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    settings = gateway_config(broker, tmp_path / "gw", initial_model, deadline=30.0, report_every=100)
    config_file = write_toml(tmp_path / "gateway.toml", settings)
    gateway = Gateway(GatewayConfig.load(config_file)).start()
    device = ManualDevice(broker, "m1")
    try:
        first = gateway.version
        assert device.wait(lambda: len(device.tasks) >= 1)
        device.send(wire_update(device, gateway))
        wait_for(lambda: gateway.version != first, 60, "the round's new model version")
        current = gateway.model
        out = tmp_path / "exported.tflite"
        run = tinyfed("gateway", "export", "--config", config_file, "--out", out)  # beside the running gateway
        assert run.returncode == 0, run.stderr
        assert out.read_bytes() == current
        version = hashlib.sha256(current).hexdigest()
        assert run.stdout.strip() == f"wrote {out}: model {version[:12]} (round 1, current, {len(current)} bytes)"
        initial = tmp_path / "initial-again.tflite"
        chosen = tinyfed("gateway", "export", "--config", config_file, "--version", first.hex()[:8], "--out", initial)
        assert chosen.returncode == 0, chosen.stderr
        assert initial.read_bytes() == initial_model.read_bytes() and "the initial model, not current" in chosen.stdout
        wrong = tinyfed("gateway", "export", "--config", config_file, "--version", "zz", "--out", initial)
        assert wrong.returncode == 2
        assert f"--version 'zz' matches 0 versions; known: {first.hex()[:12]}, {version[:12]}" in wrong.stderr
        assert gateway.version.hex() == version  # the running gateway did not notice
    finally:
        device.stop()
        gateway.stop()


def wire_update(device: ManualDevice, gateway: Gateway) -> bytes:
    from edge_runtime import wire

    return wire.encode(small_update(device.name, device.tasks[0], gateway.sizes))


def test_export_without_a_store_says_so(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "gateway.toml", {"gateway": {"storage": str(tmp_path / "nothing"),
                                                                 "model": str(tmp_path / "m.tflite")}})  # fmt: skip
    run = tinyfed("gateway", "export", "--config", config, "--out", tmp_path / "x.tflite")
    assert run.returncode == 2
    assert f"no state at {tmp_path / 'nothing' / 'gateway.db'}: the gateway has not run" in run.stderr
    assert not (tmp_path / "nothing").exists()  # a read-only command creates nothing


# -- the demo's final model -------------------------------------------------------------------------------------
@needs_backend
def test_the_demo_saves_its_final_model_and_says_where_in_its_last_line(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    run = tinyfed("demo", "--data", "digits", "--rounds", "1", "--broker", broker.url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    saved = tmp_path / "tinyfed-demo-digits.tflite"
    last = run.stdout.strip().splitlines()[-1]
    version = hashlib.sha256(saved.read_bytes()).hexdigest()[:12]
    assert last.startswith(f"final model saved to {saved} (version {version})")
    assert "tinyfed model predict --model tinyfed-demo-digits.tflite --data digits" in last
    # It is the model the last round scored: the same test accuracy through the user's predict command.
    round_line = next(ln for ln in run.stdout.splitlines() if ln.split()[:1] == ["1"])
    predicted = tinyfed("model", "predict", "--model", saved, "--data", "digits")
    assert predicted.returncode == 0, predicted.stderr
    assert f"accuracy {float(round_line.split()[1]):.4f} " in predicted.stdout


@needs_backend
def test_device_train_on_an_own_csv_holds_out_a_share_by_default(tmp_path: Path) -> None:
    digits = load_digits(seed=0).train
    data = tmp_path / "own.csv"  # the label first, named in the header
    rows = [",".join([str(y), *(f"{v:g}" for v in x)]) for x, y in zip(digits.x[:300], digits.y[:300], strict=True)]
    data.write_text("\n".join([",".join(["digit", *(f"px{i}" for i in range(64))]), *rows]) + "\n")
    model = tmp_path / "m.tflite"
    assert tinyfed("model", "build", "--arch", "mlp", "--data", "digits", "--out", model).returncode == 0
    run = tinyfed("device", "train", "--model", model, "--data", data, "--label-column", "digit", "--epochs", "3",
                  "--backend", available_backends()[0])  # fmt: skip
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    trained, held = (int(v) for v in re.findall(r"train (\d+) samples .*evaluate (\d+)", first)[0])
    assert trained + held == 300 and 0.1 < held / 300 < 0.3
    after = float(run.stdout.splitlines()[-1].split()[-1])  # the float tail's accuracy on the held-out rows
    assert after > 0.8
    zero = tinyfed("device", "train", "--model", model, "--data", data, "--label-column", "digit", "--holdout", "0")
    assert zero.returncode == 2 and "nothing to evaluate on: hold out a share with --holdout" in zero.stderr
