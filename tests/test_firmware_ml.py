"""The C firmware's ML code (firmware/ml) against the numpy int8 reference, TFLite Micro and the Python trainer.

The C code is built with the host's gcc into a small harness (firmware/ml/host_main.c) that reads a .tflite
file and int8 samples and writes int8 outputs or the float training delta; these tests feed it the models
tinyfed builds and compare. Inference must be bit-exact (the conformance suite's yardstick is 1 LSB; the
firmware is held to 0). Training must give the Python trainer's delta to float rounding: the same numpy
sample order (PCG64 reproduced in C), the same float32/float64 steps, only the order of BLAS's sums and
libm's last bit differ, so the bar is 1e-5 of the largest delta entry (measured: about 2e-7).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.sources import load_source
from edge_runtime.model.backends import available_backends, get_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import model_labels, quantize_input
from edge_runtime.model.reference import run_reference
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.trainer import TrainConfig, Trainer, cut_for_last_layers
from tests.test_conformance import every_kernel_model

FIRMWARE_ML = Path(__file__).resolve().parents[1] / "firmware" / "ml"
DELTA_TOLERANCE = 1e-5  # of the largest |delta| entry
ML_OK, ML_BAD_MODEL, ML_UNSUPPORTED, ML_NO_MEMORY, ML_NO_MODEL, ML_BAD_INPUT = range(6)


def _make(build: Path, *targets: str, arena: int | None = None) -> None:
    args = ["make", "-s", "-C", str(FIRMWARE_ML), f"BUILD={build}", *targets]
    if arena is not None:
        args.append(f"ARENA={arena}")
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, f"make {' '.join(targets)} failed:\n{done.stdout}\n{done.stderr}"


def _keyvalues(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class Harness:
    """The native build of firmware/ml/host_main.c, driven through files."""

    exe: Path
    work: Path

    def run(self, *args: str, check: bool = True) -> dict[str, str]:
        env = os.environ | {"ASAN_OPTIONS": "detect_leaks=0"}
        done = subprocess.run([str(self.exe), *args], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode >= 0, f"{self.exe.name} {args[0]} died of signal {-done.returncode}: {done.stderr}"
        if check:
            assert done.returncode == 0, f"{self.exe.name} {' '.join(args)}: {done.stdout}{done.stderr}"
        return _keyvalues(done.stdout) | {"returncode": str(done.returncode)}

    def model(self, model: bytes | Graph, name: str = "model") -> Path:
        path = self.work / f"{name}.tflite"
        path.write_bytes(model if isinstance(model, bytes) else write_graph(model))
        return path

    def info(self, model: bytes | Graph) -> dict[str, str]:
        return self.run("info", str(self.model(model)), check=False)

    def infer(self, graph: Graph, x: np.ndarray) -> np.ndarray:
        inputs, out = self.work / "x.bin", self.work / "y.bin"
        x.astype(np.int8).tofile(inputs)
        self.run("infer", str(self.model(graph)), str(inputs), str(len(x)), str(out))
        return np.fromfile(out, np.int8).reshape(len(x), -1)

    def train(
        self, graph: Graph, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, order: np.ndarray | None = None
    ) -> tuple[dict[str, str], np.ndarray]:
        inputs, labels, out = self.work / "x.bin", self.work / "labels.bin", self.work / "delta.bin"
        x.astype(np.int8).tofile(inputs)
        y.astype(np.uint8).tofile(labels)
        order_arg = "-"
        if order is not None:
            order.astype("<u4").tofile(self.work / "order.bin")
            order_arg = str(self.work / "order.bin")
        values = [cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.prox_mu]
        result = self.run(
            "train",
            str(self.model(graph)),
            str(inputs),
            str(labels),
            str(len(y)),
            *(repr(v) for v in values),
            str(int(cfg.cosine_decay)),
            str(cfg.seed),
            order_arg,
            str(out),
            check=False,
        )
        delta = np.fromfile(out, np.float32) if result.get("train_status") == "0" else np.zeros(0, np.float32)
        out.unlink(missing_ok=True)
        return result, delta


@pytest.fixture(scope="session")
def ml_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("the firmware tests need make and gcc")
    build = tmp_path_factory.mktemp("firmware-ml")
    _make(build, "host", "host-asan")
    return build


@pytest.fixture
def harness(ml_build: Path, tmp_path: Path) -> Harness:
    return Harness(ml_build / "host" / "ml_host", tmp_path)


@pytest.fixture
def asan(ml_build: Path, tmp_path: Path) -> Harness:
    return Harness(ml_build / "asan" / "ml_host", tmp_path)


@pytest.fixture(scope="session")
def cnn1d(sensor_windows: np.ndarray) -> Graph:
    """The conformance suite's 1D-CNN: the HAR architecture on synthetic windows."""
    return build_model("cnn1d", sensor_windows, ["a", "b", "c", "d"], seed=3)


@pytest.fixture(scope="session")
def har(shared_data: Path) -> tuple[DataSplit, Graph]:
    """The HAR 1D-CNN on the real UCI HAR windows (shared data folder)."""
    data = load_source("har")
    return data, build_model("cnn1d", data.train.x, data.train.classes, seed=0)


def _feature_backend() -> str:
    """Any installed interpreter runs the Python trainer's backbone: the backbone has no SOFTMAX, all are exact."""
    installed = available_backends()
    if not installed:
        pytest.skip("the Python trainer needs an interpreter backend for the backbone")
    return "micro" if "micro" in installed else installed[0]


# -- inference ------------------------------------------------------------------------------------------


def _assert_bit_exact(harness: Harness, graph: Graph, x: np.ndarray) -> None:
    got = harness.infer(graph, x)
    want = run_reference(graph, x)[0].reshape(got.shape)
    differ = int((got != want).sum())
    worst = int(np.abs(got.astype(np.int32) - want).max())
    assert differ == 0, f"{differ} of {got.size} outputs differ from the numpy reference (by up to {worst})"
    if "micro" in available_backends():
        micro = get_backend("micro").load(write_graph(graph)).run_batch(x)[0].reshape(got.shape)
        np.testing.assert_array_equal(got, micro, err_msg="differs from TFLite Micro")


def test_digits_mlp_is_bit_exact(harness: Harness, digits_mlp: Graph, digits: DataSplit) -> None:
    _assert_bit_exact(harness, digits_mlp, quantize_input(digits_mlp, digits.test.x[:100]))


def test_cnn1d_is_bit_exact_on_the_conformance_inputs(
    harness: Harness, cnn1d: Graph, sensor_windows: np.ndarray
) -> None:
    _assert_bit_exact(harness, cnn1d, quantize_input(cnn1d, sensor_windows[:40]))


def test_every_trainable_kernel_is_bit_exact(harness: Harness) -> None:
    """SAME padding, strides, RELU6, depthwise multiplier 2, both pools: the conformance suite's model."""
    x = np.random.default_rng(0).integers(-128, 128, (64, 32, 3)).astype(np.int8)
    _assert_bit_exact(harness, every_kernel_model(), x)


def test_har_cnn_is_bit_exact_on_real_windows(harness: Harness, har: tuple[DataSplit, Graph]) -> None:
    data, graph = har
    _assert_bit_exact(harness, graph, quantize_input(graph, data.test.x[:200]))


def test_info_names_what_an_update_carries(harness: Harness, digits_mlp: Graph, cnn1d: Graph) -> None:
    """wire.TensorUpdate.tensor is a tensor index: the firmware must name the ones Trainer.delta_by_tensor keys."""
    for graph in (digits_mlp, cnn1d):
        info = harness.info(graph)
        assert info["status"] == "0", info
        cut = cut_for_last_layers(graph, 1)
        head = graph.operators[cut]
        in_t = graph.tensor(graph.inputs[0])
        assert int(info["input_len"]) == int(np.prod(in_t.shape))
        assert int(info["input_zero_point"]) == int(in_t.require_int8().zero_point[0])
        assert int(info["output_len"]) == int(np.prod(graph.tensor(graph.outputs[0]).shape))
        assert info["trainable"] == "1" and int(info["cut_op"]) == cut
        assert (int(info["weight_tensor"]), int(info["bias_tensor"])) == (head.inputs[1], head.inputs[2])
        assert info["weight_name"] == graph.tensor(head.inputs[1]).name
        assert info["bias_name"] == graph.tensor(head.inputs[2]).name
        classes, features = graph.tensor(head.inputs[1]).shape
        assert (int(info["classes"]), int(info["feature_len"])) == (classes, features)
        assert int(info["weight_numel"]) == classes * features and int(info["bias_numel"]) == classes
        assert int(info["arena_bytes"]) > 0


# -- training -------------------------------------------------------------------------------------------


def _python_delta(graph: Graph, x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, float, list[int]]:
    trainer = Trainer(graph, cut=cut_for_last_layers(graph, 1), backend=get_backend(_feature_backend()), config=cfg)
    result = trainer.fit(x, y)
    delta = trainer.delta_by_tensor()
    keys = sorted(delta)
    return np.concatenate([delta[k].ravel() for k in keys]), result.epochs[-1].loss, keys


def _assert_same_delta(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 0, "the trainer did not move the layer: nothing compared"
    worst = float(np.abs(got - want).max())
    assert worst <= DELTA_TOLERANCE * scale, f"delta differs by {worst:.3g} (largest entry {scale:.3g})"


TRAIN_CASES = {
    "cosine": TrainConfig(epochs=3, batch_size=32, learning_rate=0.05, seed=7),
    "prox-decay-no-cosine": TrainConfig(
        epochs=2, batch_size=16, learning_rate=0.1, prox_mu=0.01, weight_decay=1e-3, cosine_decay=False, seed=1
    ),
    "short-last-batch": TrainConfig(epochs=2, batch_size=50, learning_rate=0.05, seed=3),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_digits_mlp_training_matches_the_python_trainer(
    harness: Harness, digits_mlp: Graph, digits: DataSplit, case: str
) -> None:
    cfg = TRAIN_CASES[case]
    x = quantize_input(digits_mlp, digits.train.x[:300])
    y = model_labels(digits_mlp, digits.train.y[:300], digits.train.classes)
    want, loss, keys = _python_delta(digits_mlp, x, y, cfg)
    result, got = harness.train(digits_mlp, x, y, cfg)
    assert result["train_status"] == "0", result
    info = harness.info(digits_mlp)
    assert keys == [int(info["weight_tensor"]), int(info["bias_tensor"])]
    _assert_same_delta(got, want)
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)
    assert int(result["samples_seen"]) == cfg.epochs * len(y)


def test_cnn1d_training_matches_the_python_trainer(harness: Harness, cnn1d: Graph, sensor_windows: np.ndarray) -> None:
    """The features come from the int8 backbone (three convolutions, pools): run in C, then trained on."""
    cfg = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, seed=5)
    x = quantize_input(cnn1d, sensor_windows[:96])
    y = np.arange(96) % 4
    want, loss, _ = _python_delta(cnn1d, x, y, cfg)
    result, got = harness.train(cnn1d, x, y, cfg)
    assert result["train_status"] == "0", result
    _assert_same_delta(got, want)
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)


def test_har_training_matches_the_python_trainer(harness: Harness, har: tuple[DataSplit, Graph]) -> None:
    data, graph = har
    cfg = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, seed=11)
    x = quantize_input(graph, data.train.x[:256])
    y = model_labels(graph, data.train.y[:256], data.train.classes)
    want, loss, _ = _python_delta(graph, x, y, cfg)
    result, got = harness.train(graph, x, y, cfg)
    assert result["train_status"] == "0", result
    _assert_same_delta(got, want)
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)


def test_a_given_order_is_followed(harness: Harness, digits_mlp: Graph, digits: DataSplit) -> None:
    """ml_train_config.order replaces numpy's draw: numpy's own order gives the same delta, another one does not."""
    cfg = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, seed=4)
    x = quantize_input(digits_mlp, digits.train.x[:128])
    y = model_labels(digits_mlp, digits.train.y[:128], digits.train.classes)
    rng = np.random.default_rng(cfg.seed)
    numpy_order = np.concatenate([rng.permutation(len(y)) for _ in range(cfg.epochs)])
    _, drawn = harness.train(digits_mlp, x, y, cfg)
    _, given = harness.train(digits_mlp, x, y, cfg, order=numpy_order)
    _, other = harness.train(digits_mlp, x, y, cfg, order=np.tile(np.arange(len(y)), cfg.epochs))
    np.testing.assert_array_equal(drawn, given)
    assert not np.array_equal(drawn, other)


def test_training_refuses_bad_labels_and_an_arena_too_small(
    harness: Harness, digits_mlp: Graph, digits: DataSplit
) -> None:
    cfg = TrainConfig(epochs=1, batch_size=8, seed=0)
    x = quantize_input(digits_mlp, digits.train.x[:16])
    y = np.full(16, 10)  # the model has 10 classes: 0..9
    result, _ = harness.train(digits_mlp, x, y, cfg)
    assert result["train_status"] == str(ML_BAD_INPUT) and "label 10" in result["error"]
    many = np.repeat(x, 400, axis=0)  # 6,400 samples of cached features exceed the 64 KiB arena
    result, _ = harness.train(digits_mlp, many, np.zeros(len(many), np.int64), cfg)
    assert result["train_status"] == str(ML_NO_MEMORY) and "arena" in result["error"]
    assert int(result["train_bytes"]) > 65536


# -- hostile and unsupported models -----------------------------------------------------------------------


@pytest.mark.parametrize(("which", "flips"), [("digits", 1500), ("cnn1d", 300)])
def test_corrupted_models_are_refused_never_crash(
    asan: Harness, digits_mlp: Graph, cnn1d: Graph, which: str, flips: int
) -> None:
    """Flipped bytes and every truncation, under AddressSanitizer and UBSan; what still loads must run and train.

    A flip that lands in the weights leaves a valid model, so about half the copies load and are run (fewer on
    the CNN: each of its inferences under ASan costs a few tens of milliseconds).
    """
    graph = digits_mlp if which == "digits" else cnn1d
    result = asan.run("fuzz", str(asan.model(graph)), str(flips), "21")
    assert int(result["bad_model"]) > 0
    assert int(result["ok"]) > 0 and int(result["ran"]) == int(result["ok"])
    assert int(result["trained"]) == int(result["ok"])


def test_clear_errors_for_bad_and_unsupported_models(harness: Harness, digits_mlp: Graph) -> None:
    model = write_graph(digits_mlp)
    short = harness.info(model[:100])
    assert short["status"] == str(ML_BAD_MODEL) and short["error"]
    wrong_id = harness.info(model[:4] + b"XXXX" + model[8:])
    assert wrong_id["status"] == str(ML_BAD_MODEL) and "identifier" in wrong_id["error"]
    logistic = digits_mlp.copy()
    logistic.operators[-1].opcode = "LOGISTIC"
    logistic.operators[-1].options = {}
    refused = harness.info(logistic)
    assert refused["status"] == str(ML_UNSUPPORTED)
    assert re.search(r"operator 3 .*code 14", refused["error"]), refused["error"]


def test_an_arena_too_small_is_refused_at_load(cnn1d: Graph, tmp_path: Path, ml_build: Path) -> None:
    """ML_ARENA_BYTES is the platform's compile-time choice; a model that needs more is refused, not run."""
    build = tmp_path / "small"
    _make(build, "host", arena=4096)
    info = Harness(build / "host" / "ml_host", tmp_path).info(cnn1d)
    assert info["status"] == str(ML_NO_MEMORY)
    assert re.search(r"need \d+ B of arena, the firmware has 4096 B", info["error"]), info["error"]


# -- the target ------------------------------------------------------------------------------------------


def test_builds_for_cortex_m3_and_m4(tmp_path: Path) -> None:
    """-Wall -Wextra -Werror with arm-none-eabi-gcc and newlib, soft-float M3 and hard-float M4, linked."""
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("gcc-arm-none-eabi is not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    _make(tmp_path, "arm")
    for core in ("m3", "m4"):
        sizes = subprocess.run(
            ["arm-none-eabi-size", "-t", str(tmp_path / core / "libml.a")], capture_output=True, text=True, check=True
        ).stdout
        text, _data, bss = (int(v) for v in sizes.splitlines()[-1].split()[:3])
        assert 0 < text < 64 * 1024, sizes
        assert bss >= 65536  # the arena is static, not allocated
        assert (tmp_path / core / "ml_host.elf").stat().st_size > 0


QEMU_MACHINES = {"m3": "mps2-an385", "m4": "mps2-an386"}


@pytest.fixture(scope="session")
def qemu_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install gcc-arm-none-eabi qemu-system-arm)")
    build = tmp_path_factory.mktemp("firmware-ml-arm")
    _make(build, "qemu")
    return build


def _on_board(build: Path, core: str, work: Path, *args: str) -> tuple[dict[str, str], int]:
    """Run the harness on QEMU's Cortex-M board under semihosting; returns its output and instructions executed."""
    done = subprocess.run(
        [
            "qemu-system-arm",
            *("-M", QEMU_MACHINES[core], "-nographic", "-monitor", "none", "-serial", "none"),
            *(
                "-semihosting-config",
                ",".join(["enable=on", "target=native", "arg=ml_host", *(f"arg={a}" for a in args)]),
            ),
            *("-kernel", str(build / core / "ml_qemu.elf")),
            *("-plugin", str(build / "insn_count.so"), "-d", "plugin"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{core} {args[0]}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    counted = re.search(r"insns=(\d+)", done.stdout + done.stderr)
    assert counted is not None, f"the instruction-count plugin printed nothing: {done.stderr}"
    return _keyvalues(done.stdout), int(counted.group(1))


@pytest.mark.parametrize("core", sorted(QEMU_MACHINES))
def test_cortex_m_build_gives_the_same_bits_on_the_board(
    qemu_build: Path,
    core: str,
    tmp_path: Path,
    digits_mlp: Graph,
    digits: DataSplit,
    cnn1d: Graph,
    sensor_windows: np.ndarray,
) -> None:
    """The M3 build (soft float) and the M4 build (FPU) on QEMU: bit-exact inference, the trainer's delta."""
    for name, graph, x in (
        ("mlp", digits_mlp, quantize_input(digits_mlp, digits.test.x[:20])),
        ("cnn", cnn1d, quantize_input(cnn1d, sensor_windows[:3])),
    ):
        (tmp_path / f"{name}.tflite").write_bytes(write_graph(graph))
        x.astype(np.int8).tofile(tmp_path / f"{name}.x")
        _, insns = _on_board(
            qemu_build, core, tmp_path, "infer", f"{name}.tflite", f"{name}.x", str(len(x)), f"{name}.y"
        )
        got = np.fromfile(tmp_path / f"{name}.y", np.int8).reshape(len(x), -1)
        np.testing.assert_array_equal(got, run_reference(graph, x)[0].reshape(got.shape), err_msg=f"{core} {name}")
        assert insns > 0
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=0.05, seed=2)
    x = quantize_input(digits_mlp, digits.train.x[:48])
    y = model_labels(digits_mlp, digits.train.y[:48], digits.train.classes)
    x.astype(np.int8).tofile(tmp_path / "tx")
    y.astype(np.uint8).tofile(tmp_path / "ty")
    hyper = [cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.prox_mu]
    result, _ = _on_board(
        qemu_build,
        core,
        tmp_path,
        "train",
        "mlp.tflite",
        "tx",
        "ty",
        str(len(y)),
        *(repr(v) for v in hyper),
        "1",
        str(cfg.seed),
        "-",
        "delta",
    )
    assert result["train_status"] == "0", result
    want, loss, _ = _python_delta(digits_mlp, x, y, cfg)
    _assert_same_delta(np.fromfile(tmp_path / "delta", np.float32), want)
    assert float(result["loss"]) == pytest.approx(loss, rel=1e-5)
