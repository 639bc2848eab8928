"""Reading, writing and patching .tflite files, and the typed errors for bad ones."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edge_runtime.model.errors import CorruptModelError, NotInt8Error, ShapeMismatchError, UnsupportedOpError
from edge_runtime.model.graph import Graph, Operator, Quantization, Tensor, model_version
from edge_runtime.model.info import ModelInfo, quantize_input
from edge_runtime.model.patch import ModelPatcher
from edge_runtime.model.reader import read_graph
from edge_runtime.model.reference import run_reference
from edge_runtime.model.writer import write_graph
from edge_runtime.train.tail import Tail


def test_round_trip_keeps_every_tensor_operator_and_metadata(digits_mlp: Graph) -> None:
    data = write_graph(digits_mlp)
    back = read_graph(data)
    assert [op.opcode for op in back.operators] == ["FULLY_CONNECTED"] * 3 + ["SOFTMAX"]
    assert back.inputs == digits_mlp.inputs and back.outputs == digits_mlp.outputs
    for a, b in zip(digits_mlp.tensors, back.tensors, strict=True):
        assert (a.name, a.shape, a.dtype) == (b.name, b.shape, b.dtype)
        if a.data is not None:
            np.testing.assert_array_equal(a.data, b.data)
        assert a.quant is not None and b.quant is not None
        np.testing.assert_array_equal(a.quant.scale, b.quant.scale)
        np.testing.assert_array_equal(a.quant.zero_point, b.quant.zero_point)
    assert ModelInfo.from_graph(back).classes == [str(i) for i in range(10)]
    assert write_graph(back) == data  # writing is deterministic


def test_weights_are_per_channel_and_biases_use_input_times_weight_scale(digits_mlp: Graph) -> None:
    op = digits_mlp.operators[0]
    x_q = digits_mlp.tensor(op.inputs[0]).quant
    w_q = digits_mlp.tensor(op.inputs[1]).quant
    b_q = digits_mlp.tensor(op.inputs[2]).quant
    assert x_q is not None and w_q is not None and b_q is not None
    assert w_q.scale.size == digits_mlp.tensor(op.inputs[1]).shape[0]
    assert not w_q.zero_point.any()
    np.testing.assert_allclose(b_q.scale, x_q.scale[0] * w_q.scale, rtol=1e-6)
    assert digits_mlp.tensor(op.inputs[2]).dtype == np.int32


def test_version_is_sha256_of_the_bytes(digits_mlp: Graph) -> None:
    data = write_graph(digits_mlp)
    assert model_version(data) == hashlib.sha256(data).hexdigest()


def test_constant_buffers_are_16_byte_aligned(digits_mlp: Graph) -> None:
    import tflite

    data = write_graph(digits_mlp)
    model = tflite.Model.GetRootAsModel(data, 0)
    for i in range(1, model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % 16 == 0, f"buffer {i} starts at {start}"


@pytest.mark.parametrize("cut", [0, 7, 100, 1000, -1])
def test_truncated_file_is_refused_as_corrupt(digits_mlp: Graph, cut: int) -> None:
    data = write_graph(digits_mlp)
    with pytest.raises(CorruptModelError):
        read_graph(data[:cut] if cut >= 0 else data[: len(data) // 2])


def test_wrong_identifier_is_named() -> None:
    with pytest.raises(CorruptModelError, match="TFLite identifier"):
        read_graph(b"\x10\x00\x00\x00PNG!" + bytes(64))


def test_flipped_offset_bytes_never_crash(digits_mlp: Graph) -> None:
    data = bytearray(write_graph(digits_mlp))
    rng = np.random.default_rng(0)
    for _ in range(200):
        damaged = bytearray(data)
        for pos in rng.integers(0, 256, 4):
            damaged[pos] ^= 0xFF
        try:
            read_graph(bytes(damaged))
        except CorruptModelError:
            pass
        except Exception as exc:  # pragma: no cover - the assertion is the point
            pytest.fail(f"damaged model raised {type(exc).__name__}: {exc}")


def _float_graph() -> Graph:
    tensors = [
        Tensor("x", (1, 4), np.dtype(np.float32)),
        Tensor("w", (2, 4), np.dtype(np.float32), data=np.ones((2, 4), np.float32)),
        Tensor("b", (2,), np.dtype(np.float32), data=np.zeros(2, np.float32)),
        Tensor("y", (1, 2), np.dtype(np.float32)),
    ]
    return Graph(tensors, [Operator("FULLY_CONNECTED", [0, 1, 2], [3], {"activation": "NONE"})], [0], [3])


def test_float_model_is_refused_naming_the_tensor() -> None:
    graph = read_graph(write_graph(_float_graph()))
    with pytest.raises(NotInt8Error, match=r"'x'.*int8 required"):
        graph.check_int8()
    with pytest.raises(NotInt8Error):
        Tail.from_graph(graph, 0)


def test_op_without_backward_pass_is_named(digits_mlp: Graph) -> None:
    graph = digits_mlp.copy()
    graph.operators.insert(2, Operator("TANH", [graph.operators[1].outputs[0]], [graph.operators[1].outputs[0]]))
    with pytest.raises(UnsupportedOpError, match=r"#2 TANH.*no backward pass"):
        Tail.from_graph(graph, 2)


def test_shape_mismatch_names_the_tensor(digits_mlp: Graph) -> None:
    w = digits_mlp.copy().tensor(digits_mlp.operators[0].inputs[1])
    with pytest.raises(ShapeMismatchError, match=w.name):
        w.set_data(np.zeros((3, 3), np.int8))
    with pytest.raises(ShapeMismatchError, match="input"):
        run_reference(digits_mlp, np.zeros((2, 65), np.int8))


def test_unwritable_operator_is_refused_by_name() -> None:
    graph = _float_graph()
    graph.operators[0] = Operator("LSTM", [0], [3])
    with pytest.raises(UnsupportedOpError, match="LSTM"):
        write_graph(graph)


def test_patch_in_place_keeps_length_and_other_bytes(digits_mlp: Graph, digits) -> None:
    data = write_graph(digits_mlp)
    graph = read_graph(data)
    op = graph.operators[2]
    w = graph.tensor(op.inputs[1])
    rng = np.random.default_rng(0)
    new_w = rng.normal(0, 0.2, w.shape).astype(np.float32)
    new_b = rng.normal(0, 0.1, w.shape[0]).astype(np.float32)
    patcher = ModelPatcher(data)
    patcher.set_layer(2, new_w, new_b)
    patched = bytes(patcher)
    assert len(patched) == len(data)
    assert sum(a != b for a, b in zip(patched, data, strict=True)) < w.data.size + 4 * (3 * w.shape[0]) + 16
    back = read_graph(patched)
    w_q = back.tensor(op.inputs[1]).quant
    assert w_q is not None
    dequant = back.tensor(op.inputs[1]).data.astype(np.float32) * w_q.scale[:, None]
    np.testing.assert_allclose(dequant, new_w, atol=float(w_q.scale.max()) / 2 + 1e-7)
    in_scale = float(back.tensor(op.inputs[0]).quant.scale[0])  # type: ignore[union-attr]
    b_q = back.tensor(op.inputs[2]).quant
    assert b_q is not None
    np.testing.assert_allclose(b_q.scale, in_scale * w_q.scale, rtol=1e-6)
    # The patched file still runs and gives different outputs.
    x = quantize_input(back, digits.test.x[:20])
    assert not np.array_equal(run_reference(back, x)[0], run_reference(graph, x)[0])


def test_patch_refuses_wrong_shape_and_unknown_tensor(digits_mlp: Graph) -> None:
    patcher = ModelPatcher(write_graph(digits_mlp))
    with pytest.raises(ShapeMismatchError):
        patcher.set_layer(0, np.zeros((3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(UnsupportedOpError, match="SOFTMAX"):
        patcher.set_layer(3, np.zeros((3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(Exception, match="no tensor named"):
        patcher.data_view("nope")


def test_patch_refuses_a_tensor_sharing_its_buffer(digits_mlp: Graph) -> None:
    graph = digits_mlp.copy()
    # A second tensor with the weights' data; the file is then edited so both name one buffer.
    w_index = graph.operators[0].inputs[1]
    w = graph.tensor(w_index)
    assert w.data is not None and w.quant is not None
    graph.add_tensor(
        Tensor("twin", w.shape, w.dtype, Quantization(w.quant.scale.copy(), w.quant.zero_point.copy()), w.data.copy())
    )
    data = bytearray(write_graph(graph))
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    sg = model.Subgraphs(0)
    first = sg.Tensors(w_index)
    last = sg.Tensors(sg.TensorsLength() - 1)
    slot = last._tab.Offset(8)  # Tensor.buffer field
    import struct

    struct.pack_into("<I", data, last._tab.Pos + slot, first.Buffer())
    patcher = ModelPatcher(bytes(data))
    with pytest.raises(Exception, match="shares its buffer"):
        patcher.data_view("twin")


def _converter_made_model() -> bytes:
    """sine_float.tflite, made by TensorFlow's MLIR converter, ships inside the tflite-micro wheel."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("tflite_micro")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tflite-micro (which ships a converter-made model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "python" / "tflite_micro" / "sine_float.tflite"
    if not path.is_file():
        pytest.skip(f"{path} not in this tflite-micro wheel")
    return path.read_bytes()


def test_converter_made_model_is_read_refused_as_float_and_rewritten_faithfully(backend) -> None:
    original = _converter_made_model()
    graph = read_graph(original)
    assert graph.description == "MLIR Converted."
    assert [op.opcode for op in graph.operators] == ["FULLY_CONNECTED"] * 3
    assert graph.operators[0].options["activation"] == "RELU"
    assert "min_runtime_version" in graph.metadata
    with pytest.raises(NotInt8Error, match="serving_default_dense_input:0"):
        graph.check_int8()
    rewritten = write_graph(graph)
    x = np.linspace(0, 6.28, 16, dtype=np.float32).reshape(16, 1)

    def run(model: bytes) -> list[float]:
        return backend.load(model).run_batch(x)[0].ravel().tolist()

    assert run(rewritten) == run(original)


def test_samples_of_the_wrong_size_are_refused_naming_the_input(digits_mlp: Graph) -> None:
    with pytest.raises(ShapeMismatchError, match="'input'"):
        quantize_input(digits_mlp, np.zeros((2, 63), np.float32))
    assert quantize_input(digits_mlp, np.zeros((2, 8, 8), np.float32)).shape == (2, 64)


def test_atomic_write_replaces_whole_files_only(tmp_path) -> None:
    from edge_runtime.storage import atomic_write

    target = tmp_path / "m.tflite"
    atomic_write(target, b"old")
    atomic_write(target, b"new model")
    assert target.read_bytes() == b"new model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temp files left behind
