"""One conformance suite, run on every installed interpreter: each must match the numpy int8 reference."""

from __future__ import annotations

import os
import threading
from types import ModuleType

import numpy as np
import pytest

from edge_runtime.model.backends.base import Backend
from edge_runtime.model.errors import BackendUnavailableError
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reference import run_reference
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.layers import Conv2D, DepthwiseConv2D, FullyConnected, Pool2D, Reshape, Softmax
from edge_runtime.train.split import backbone_graph
from edge_runtime.train.tail import Tail


def every_kernel_model() -> Graph:
    """A model exercising every op the trainer supports, with SAME padding, strides, RELU6, multiplier 2."""
    rng = np.random.default_rng(7)
    layers = [
        Reshape(out_shape=(1, 1, 32, 3)),
        Conv2D(
            weight=rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32),
            bias=rng.normal(0, 0.1, 8).astype(np.float32),
            activation="RELU6",
            stride=(1, 2),
            padding="SAME",
        ),
        DepthwiseConv2D(
            weight=rng.normal(0, 0.5, (1, 1, 3, 16)).astype(np.float32),
            bias=rng.normal(0, 0.1, 16).astype(np.float32),
            activation="RELU",
            multiplier=2,
            padding="SAME",
        ),
        Pool2D(opcode="AVERAGE_POOL_2D", filter=(1, 3), stride=(1, 2), padding="SAME"),
        Pool2D(opcode="MAX_POOL_2D", filter=(1, 2), stride=(1, 2), padding="VALID"),
        Reshape(out_shape=(1, 64)),
        FullyConnected(
            weight=rng.normal(0, 0.3, (5, 64)).astype(np.float32), bias=rng.normal(0, 0.1, 5).astype(np.float32)
        ),
        Softmax(),
    ]
    tail = Tail(layers, (2.0 / 255, -1))
    tail.calibrate(rng.normal(0, 0.6, (128, 32, 3)).astype(np.float32))
    return tail.to_graph((1, 32, 3))


def assert_within_one_lsb(backend: Backend, graph: Graph, x: np.ndarray) -> None:
    session = backend.load(write_graph(graph))
    got = session.run_batch(x)[0]
    want = run_reference(graph, x)[0].reshape(got.shape)
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1, f"{backend.name}: {int((diff > 1).sum())} outputs differ by more than 1 LSB"


def test_digits_mlp_matches_reference(backend: Backend, digits_mlp: Graph, digits) -> None:
    x = quantize_input(digits_mlp, digits.test.x[:100])
    assert_within_one_lsb(backend, digits_mlp, x)


def test_cnn1d_matches_reference(backend: Backend, sensor_windows: np.ndarray) -> None:
    graph = build_model("cnn1d", sensor_windows, ["a", "b", "c", "d"], seed=3)
    assert_within_one_lsb(backend, graph, quantize_input(graph, sensor_windows[:40]))


def test_every_trainable_kernel_matches_reference(backend: Backend) -> None:
    graph = every_kernel_model()
    x = np.random.default_rng(0).integers(-128, 128, (64, 32, 3)).astype(np.int8)
    assert_within_one_lsb(backend, graph, x)


def test_cut_activation_is_readable_and_exact(backend: Backend, sensor_windows: np.ndarray) -> None:
    graph = build_model("cnn1d", sensor_windows, ["a", "b"], seed=4)
    x = quantize_input(graph, sensor_windows[:16])
    cut = 5  # after the second conv block
    tap = graph.operators[cut].inputs[0]
    want = run_reference(graph, x, taps=(tap,))[1]
    via_taps = backend.load_graph(graph, taps=(tap,)).run_batch(x)
    via_backbone = backend.load_graph(backbone_graph(graph, cut)).run_batch(x)[0]
    assert len(via_taps) == 2
    np.testing.assert_array_equal(via_taps[1].reshape(want.shape), want)
    np.testing.assert_array_equal(via_backbone.reshape(want.shape), want)


def test_wrong_input_shape_is_refused(backend: Backend, digits_mlp: Graph) -> None:
    from edge_runtime.model.errors import ShapeMismatchError

    session = backend.load(write_graph(digits_mlp))
    with pytest.raises(ShapeMismatchError, match="input 0"):
        session.set_input(np.zeros((1, 63), np.int8))


@pytest.fixture
def micro() -> ModuleType:
    """The TFLite Micro backend module, skipped where tflite-micro is not installed (the numpy-1 environment)."""
    module = pytest.importorskip("edge_runtime.model.backends.micro")
    try:
        module.MicroBackend()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    return module


def test_micro_reports_a_fixed_arena_and_refuses_a_small_one(digits_mlp: Graph, micro: ModuleType) -> None:
    backend = micro.MicroBackend()
    model = write_graph(digits_mlp)
    session = backend.load(model)
    assert session.arena_recorded > 0
    assert session.arena_bytes >= session.arena_recorded
    tight = micro.MicroBackend(arena_size=session.arena_recorded)
    with pytest.raises(micro.ArenaTooSmallError, match="tensor arena"):
        tight.load(model)
    exact = micro.MicroBackend(arena_size=session.arena_bytes)
    assert exact.load(model).run_batch(np.zeros((1, 64), np.int8))[0].shape == (1, 10)


def test_micro_measures_arenas_from_many_threads_without_stealing_the_process_output(
    digits_mlp: Graph, micro: ModuleType, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two boards behind one bridge measure their arenas at once; the report goes through fds 1 and 2."""
    backend = micro.MicroBackend()
    model = write_graph(digits_mlp)
    expected = backend.measure_arena(model)
    results: list[int | BaseException] = []

    def measure() -> None:
        for _ in range(25):
            try:
                results.append(backend.measure_arena(model))
            except BaseException as exc:  # the test reports whatever a thread hit
                results.append(exc)

    threads = [threading.Thread(target=measure) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 200
    os.write(1, b"still-mine\n")  # fd 1 must point where it did before, not at a deleted capture file
    assert "still-mine" in capfd.readouterr().out
