"""The C board's update coding (firmware/src/update.c) against edge_runtime's, byte for byte.

The firmware's selection (global top-k with error feedback), quantisation, clipping and wire codings are
compiled for the host as a shared library and fed the same deltas and residuals as
:class:`edge_runtime.compress.compressor.Compressor`; the CBOR of the tensor entries and the residual
left behind must be identical, so the gateway cannot tell a C board's update from a Python device's.
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.compress.compressor import CompressionConfig, Compressor
from edge_runtime.wire.cbor import dumps
from edge_runtime.wire.values import ValueCoding

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a native gcc to build the firmware's code")


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    lib = tmp_path_factory.mktemp("fw") / "libupdate.so"
    sources = [FIRMWARE / "src" / name for name in ("update.c", "cbor.c")] + [FIRMWARE / "host" / "update_shim.c"]
    subprocess.run(
        ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-shared", "-fPIC", f"-I{FIRMWARE / 'include'}",
         *map(str, sources), "-lm", "-o", str(lib)],
        check=True,
    )  # fmt: skip
    return ctypes.CDLL(str(lib))


def residual_blob(residual: dict[int, np.ndarray]) -> bytes:
    out = struct.pack("<I", len(residual))
    for tensor, values in residual.items():
        out += struct.pack("<II", tensor, values.size) + values.astype("<f4").tobytes()
    return out


def firmware_update(
    lib: ctypes.CDLL, deltas: dict[int, np.ndarray], residual: dict[int, np.ndarray], config: CompressionConfig
) -> tuple[bytes, dict[int, np.ndarray], int]:
    tensors = (ctypes.c_uint32 * len(deltas))(*deltas)
    numels = (ctypes.c_uint32 * len(deltas))(*(d.size for d in deltas.values()))
    flat = np.concatenate([d.reshape(-1) for d in deltas.values()]).astype(np.float32)
    blob = residual_blob(residual)
    out = ctypes.create_string_buffer(64 * 1024)
    res = ctypes.create_string_buffer(64 * 1024)
    rlen, below = ctypes.c_uint32(), ctypes.c_int()
    n = lib.shim_encode(
        tensors, numels, len(deltas), flat.ctypes.data_as(ctypes.c_void_p), blob, len(blob),
        ctypes.c_double(config.density), ctypes.c_double(config.clip), ctypes.c_uint8(int(config.value_coding)),
        out, len(out), res, len(res), ctypes.byref(rlen), ctypes.byref(below),
    )  # fmt: skip
    assert n > 0, "the firmware refused the delta"
    raw = res.raw[: rlen.value]
    left: dict[int, np.ndarray] = {}
    (count,), at = struct.unpack_from("<I", raw), 4
    for _ in range(count):
        tensor, numel = struct.unpack_from("<II", raw, at)
        left[tensor] = np.frombuffer(raw, "<f4", numel, at + 8).copy()
        at += 8 + 4 * numel
    return out.raw[:n], left, below.value


@pytest.mark.parametrize(
    ("density", "coding", "clip", "scale"),
    [
        (0.01, ValueCoding.INT8, 0.0, 0.01),  # Golomb-Rice or varint positions
        (0.1, ValueCoding.INT8, 0.0, 0.01),
        (0.5, ValueCoding.INT8, 0.0, 1.0),  # bitmap
        (1.0, ValueCoding.INT8, 0.0, 0.01),  # dense
        (0.2, ValueCoding.FLOAT32, 0.0, 0.01),
        (0.2, ValueCoding.INT8, 0.05, 0.01),  # clipped: the bit, and the scale brought under the bound
    ],
)
def test_the_firmwares_update_is_byte_identical_to_a_python_devices(
    firmware: ctypes.CDLL, density: float, coding: ValueCoding, clip: float, scale: float
) -> None:
    rng = np.random.default_rng(int(density * 1000) + int(coding) + int(clip * 100))
    shapes = {16: 320, 17: 10}  # the digits MLP's head: weight [10, 32] and bias
    config = CompressionConfig(density=float(np.float32(density)), value_coding=coding, clip=clip)
    python = Compressor(config)
    residual: dict[int, np.ndarray] = {}
    for _ in range(3):  # rounds: the residual carries over, in both
        deltas = {t: (rng.standard_normal(n) * scale).astype(np.float32) for t, n in shapes.items()}
        deltas[17][rng.integers(0, 10)] *= 40  # an outlier, as a bias often is
        python.residual = {t: v.copy() for t, v in residual.items()}
        expected = python.compress(deltas)
        got, left, below = firmware_update(firmware, deltas, residual, config)
        assert got == dumps([t.to_cbor() for t in expected.tensors])
        assert below == (-1 if expected.below_clip is None else int(expected.below_clip))
        assert left.keys() == expected.residual.keys()
        for tensor, values in expected.residual.items():
            np.testing.assert_array_equal(left[tensor], values)
        residual = left
