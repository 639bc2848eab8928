"""Shared fixtures: real data, real models, every installed interpreter backend, a real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.sources import load_digits, shared_data_dir
from edge_runtime.model.backends import available_backends, get_backend
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.transport.broker import MosquittoProcess, find_mosquitto

INSTALLED = available_backends()
MOSQUITTO = find_mosquitto()


def pytest_report_header() -> str:
    return f"tinyfed interpreter backends installed: {', '.join(INSTALLED) or 'none'}"


# Modules whose behaviour does not depend on numpy's major version or on the interpreter wheel: packaging,
# error messages, CLI wiring, TLS and provisioning, CBOR/CDDL, the serial link, the bench runner. The second
# environment (numpy 1.26, tflite-runtime: see scripts/test.sh) skips them, and skips the broker tests that train
# nothing, so the suite runs once in full and once for what numpy 1 and tflite-runtime can change.
NUMPY_INDEPENDENT = frozenset({
    "test_install_matrix", "test_errors", "test_cli", "test_pki", "test_pki_broker", "test_envelope",
    "test_cddl", "test_bench", "test_hil_cli", "test_device_run", "test_identity", "test_serial_link",
    "test_embedded_broker",
})  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--numpy-1-subset",
        action="store_true",
        help="run only what numpy 1 and the tflite-runtime wheel can change (the second environment's run)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mosquitto: starts a Mosquitto broker (the `broker` fixture)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the broker, directly or through another fixture, is marked, and skipped without one.

    With --numpy-1-subset, a test that uses an interpreter (the ``backend`` fixture) always runs; the others run
    unless they need a broker or their module is in NUMPY_INDEPENDENT.
    """
    skip = pytest.mark.skip(reason="mosquitto not installed (.ci/run installs it)")
    kept, dropped = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "broker" in fixtures:
            item.add_marker(pytest.mark.mosquitto)
            if MOSQUITTO is None:
                item.add_marker(skip)
        independent = "broker" in fixtures or item.module.__name__.rsplit(".", 1)[-1] in NUMPY_INDEPENDENT
        if config.getoption("--numpy-1-subset") and "backend" not in fixtures and independent:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto of this test's own on a free loopback port, its state kept under tmp_path."""
    with MosquittoProcess(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture(
    params=INSTALLED or [pytest.param("none", marks=pytest.mark.skip(reason="no interpreter backend installed"))]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    return get_backend(request.param)


@pytest.fixture(scope="session")
def digits() -> DataSplit:
    return load_digits(seed=0)


@pytest.fixture(scope="session")
def digits_mlp(digits: DataSplit) -> Graph:
    return build_model("mlp", digits.train.x, digits.train.classes, seed=0)


@pytest.fixture
def initial_model(tmp_path: Path, digits_mlp: Graph) -> Path:
    """The digits MLP as a file: a gateway's first model."""
    path = tmp_path / "initial.tflite"
    path.write_bytes(write_graph(digits_mlp))
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if folder is None:
        pytest.skip("../shared/data is absent on this machine (CI always has it)")
    return folder


@pytest.fixture(scope="session")
def sensor_windows() -> np.ndarray:
    """Synthetic [N, 128, 9] windows: only used where the model's shape, not accuracy, matters."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, (256, 1, 9)).astype(np.float32)
    return (np.sin(t[None, :, None] + phase) + 0.3 * rng.standard_normal((256, 128, 9))).astype(np.float32)
