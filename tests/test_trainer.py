"""The on-device trainer: accuracy on real data, int8 parity, cut points, personal heads, FedProx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.har import load_har_npz
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.errors import ModelError
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.evaluate import accuracy, int8_predictions
from edge_runtime.train.trainer import TrainConfig, Trainer, cut_for_last_layers


def _train_digits(graph: Graph, digits: DataSplit, **kwargs: object) -> Trainer:
    config = TrainConfig(epochs=int(kwargs.pop("epochs", 20)), learning_rate=0.05, seed=0)
    trainer = Trainer(graph, config=config, **kwargs)  # type: ignore[arg-type]
    trainer.fit(quantize_input(graph, digits.train.x), digits.train.y)
    return trainer


@pytest.fixture(scope="module")
def trained_digits(digits_mlp: Graph, digits: DataSplit) -> tuple[Trainer, bytes]:
    trainer = _train_digits(digits_mlp, digits)
    return trainer, write_graph(trainer.export())


def test_digits_mlp_from_scratch_reaches_95_percent_int8(backend: Backend, trained_digits, digits) -> None:
    trainer, model = trained_digits
    x = quantize_input(read_graph(model), digits.test.x)
    int8_acc = accuracy(int8_predictions(backend, model, x), digits.test.y)
    float_acc = accuracy(trainer.predict_float(trainer.features(x)), digits.test.y)
    assert int8_acc >= 0.95, f"{backend.name}: int8 accuracy {int8_acc:.4f}"
    assert abs(int8_acc - float_acc) <= 0.005, f"int8 {int8_acc:.4f} vs float tail {float_acc:.4f}"


def test_training_is_reproducible_bit_for_bit(digits_mlp: Graph, digits: DataSplit, trained_digits) -> None:
    again = _train_digits(digits_mlp, digits)
    assert write_graph(again.export()) == trained_digits[1]


def test_activation_statistics_are_kept_for_the_gateway(trained_digits) -> None:
    trainer, _ = trained_digits
    stats = trainer.activation_stats()
    assert len(stats) == 3  # one per FULLY_CONNECTED output
    for s in stats.values():
        assert s["batches"] > 0 and s["seen_min"] <= s["ema_min"] <= s["ema_max"] <= s["seen_max"]


def test_backbone_stays_frozen_below_the_cut(backend: Backend, trained_digits, digits) -> None:
    _, model = trained_digits
    graph = read_graph(model)
    cut = cut_for_last_layers(graph, 1)
    assert graph.operators[cut].opcode == "FULLY_CONNECTED" and cut == 2
    trainer = Trainer(graph, cut=cut, backend=backend, config=TrainConfig(epochs=2, learning_rate=0.01))
    trainer.fit(quantize_input(graph, digits.train.x[:300]), digits.train.y[:300])
    new = trainer.export()
    for op in graph.operators[:cut]:
        for i in op.inputs[1:]:
            np.testing.assert_array_equal(graph.tensor(i).data, new.tensor(i).data)
    assert set(trainer.delta()) == {graph.tensor(graph.operators[cut].inputs[k]).name for k in (1, 2)}


def test_cut_beyond_zero_needs_a_backend(digits_mlp: Graph) -> None:
    trainer = Trainer(digits_mlp, cut=2)
    with pytest.raises(ModelError, match="backend"):
        trainer.features(np.zeros((1, 64), np.int8))


def test_personal_head_is_left_out_of_the_update(digits_mlp: Graph, digits: DataSplit) -> None:
    trainer = _train_digits(digits_mlp, digits, epochs=1, personal_layers=1)
    shared = trainer.delta()
    everything = trainer.delta(include_personal=True)
    head = digits_mlp.operators[2]
    head_names = {digits_mlp.tensor(head.inputs[1]).name, digits_mlp.tensor(head.inputs[2]).name}
    assert head_names.isdisjoint(shared) and head_names <= set(everything)
    assert all(np.abs(everything[n]).sum() > 0 for n in head_names)  # it did train, locally


def test_proximal_term_pulls_towards_the_base(digits_mlp: Graph, digits: DataSplit) -> None:
    def norm(mu: float) -> float:
        trainer = Trainer(digits_mlp, config=TrainConfig(epochs=2, learning_rate=0.05, prox_mu=mu))
        trainer.fit(quantize_input(digits_mlp, digits.train.x), digits.train.y)
        return float(np.sqrt(sum((d**2).sum() for d in trainer.delta().values())))

    assert norm(5.0) < 0.5 * norm(0.0)


def test_mismatched_labels_are_refused(digits_mlp: Graph) -> None:
    trainer = Trainer(digits_mlp)
    with pytest.raises(ModelError, match="3 samples but 2 labels"):
        trainer.fit(np.zeros((3, 64), np.int8), np.zeros(2, np.int64))
    with pytest.raises(ModelError, match=r"labels span 0\.\.10; the model has 10 classes"):
        trainer.fit(np.zeros((2, 64), np.int8), np.array([0, 10]))


@pytest.fixture(scope="module")
def har(shared_data: Path) -> DataSplit:
    return load_har_npz(shared_data / "har_raw.npz")


@pytest.fixture(scope="module")
def trained_har(har: DataSplit) -> tuple[Trainer, bytes]:
    graph = build_model("cnn1d", har.train.x, har.train.classes, seed=0)
    trainer = Trainer(graph, config=TrainConfig(epochs=2, learning_rate=0.02, seed=0))
    trainer.fit(quantize_input(graph, har.train.x), har.train.y)
    return trainer, write_graph(trainer.export())


def test_har_cnn1d_reaches_90_percent_on_held_out_subjects(backend: Backend, har: DataSplit, trained_har) -> None:
    trainer, model = trained_har
    x = quantize_input(read_graph(model), har.test.x)
    int8_acc = accuracy(int8_predictions(backend, model, x), har.test.y)
    float_acc = accuracy(trainer.predict_float(trainer.features(x)), har.test.y)
    assert int8_acc >= 0.90, f"{backend.name}: {int8_acc:.4f}"
    assert abs(int8_acc - float_acc) <= 0.005


def test_har_personalisation_trains_the_last_two_layers_only(backend: Backend, har: DataSplit, trained_har) -> None:
    _, model = trained_har
    graph = read_graph(model)
    subject = int(har.test.groups[0])  # type: ignore[index]
    idx = np.random.default_rng(0).permutation(np.flatnonzero(har.test.groups == subject))
    half = len(idx) // 2
    cut = cut_for_last_layers(graph, 2)
    trainer = Trainer(graph, cut=cut, backend=backend, config=TrainConfig(epochs=5, learning_rate=0.01, seed=0))
    trainer.fit(quantize_input(graph, har.test.x[idx[:half]]), har.test.y[idx[:half]])
    assert len(trainer.tail.trainable()) == 2
    new = trainer.export()
    for op in graph.operators[:cut]:
        for i in op.inputs[1:]:
            np.testing.assert_array_equal(graph.tensor(i).data, new.tensor(i).data)
    held_out = quantize_input(graph, har.test.x[idx[half:]])
    before = accuracy(int8_predictions(backend, model, held_out), har.test.y[idx[half:]])
    after = accuracy(int8_predictions(backend, write_graph(new), held_out), har.test.y[idx[half:]])
    assert after > before, f"personalising subject {subject}: {before:.4f} -> {after:.4f}"


def test_trained_delta_compresses_and_travels_keyed_by_tensor_index(trained_digits) -> None:
    from edge_runtime import wire
    from edge_runtime.compress import CompressionConfig, Compressor, decompress

    trainer, _ = trained_digits
    deltas = trainer.delta_by_tensor()
    shapes = trainer.trainable_tensors()
    assert set(deltas) == set(shapes) and len(deltas) == 6  # weights and biases of three layers
    assert all(trainer.graph.tensor(i).is_constant for i in deltas)
    result = Compressor(CompressionConfig(density=0.01)).compress(deltas)
    payload = wire.encode(wire.Update(bytes(16), "d", 1, bytes(32), 100, result.tensors))
    back = wire.decode(payload, spec={i: int(np.prod(s)) for i, s in shapes.items()})
    dense = decompress(back.tensors, shapes)
    biggest = max(deltas, key=lambda i: float(np.abs(deltas[i]).max()))
    assert biggest in dense and np.abs(dense[biggest]).max() > 0
