"""The emulated Raspberry Pi: one board per session, provisioned and installed the way a Pi owner does it.

These tests run only in scripts/test.sh's emulated-Pi stage (``PI_USERLAND_TESTS=1``), as root, once
``scripts/pi-userland.sh build`` has made the userland; the main suite skips them, so it stays fast. The board
is the cached Debian bookworm arm64 userland under an overlay of this session's (bench/pi_userland.py):
``scripts/pi-install.sh`` runs inside it as on a freshly flashed Pi, with the device's bundle from
``tinyfed provision device`` on a federation whose Mosquitto and gateway run on the host (loopback is shared).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench.pi_userland import INSTALL_SCRIPT, Userland, build_wheel, unavailable
from edge_runtime.data.dataset import DataSplit
from gateway.pki import provision
from gateway.pki.layout import Layout
from tests.trust import FEDERATION

DEVICE = "pi-emu"
STAGE = os.environ.get("PI_USERLAND_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    why = "the emulated-Pi stage runs these (scripts/test.sh sets PI_USERLAND_TESTS=1)" if not STAGE else unavailable()
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.pi)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pi: runs inside the emulated Raspberry Pi userland (tests/pi/)")


@pytest.fixture(scope="session")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host folder seen at the same path inside the board: wheel, bundle, data, probe inputs and outputs."""
    return tmp_path_factory.mktemp("pi-exchange")


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory, exchange: Path) -> Iterator[Userland]:
    kept = os.environ.get("PI_USERLAND_BOARD")  # a board kept between runs (debugging): pi-install.sh runs again on it
    overlay = Path(kept) if kept else tmp_path_factory.mktemp("pi-board")
    yield Userland(overlay=overlay, pi=4, binds=[exchange])
    if not kept:
        shutil.rmtree(overlay, ignore_errors=True)  # a venv of some 250 MB: not kept for pytest's last three runs


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The federation's root of trust on the host, with the broker on a free loopback port and the board enrolled
    as `tinyfed provision device pi-emu --archive` enrols it (bundle for /etc/tinyfed, storage /var/lib/tinyfed)."""
    from edge_runtime.transport.broker import free_port

    root = tmp_path_factory.mktemp("pi-hub") / "pki"
    provision.init(root, FEDERATION, ["127.0.0.1"], port=free_port())
    provision.add_device(root, DEVICE, make_archive=True)
    return Layout(root)


@pytest.fixture(scope="session")
def digits_split() -> DataSplit:
    from edge_runtime.data.sources import load_digits

    return load_digits(seed=0)


@pytest.fixture(scope="session")
def device_data(exchange: Path, digits_split: DataSplit) -> Path:
    """The board's own data: a tenth of digits' training split as the NPZ a Pi owner would bring (docs/data.md)."""
    train = digits_split.train
    path = exchange / "kitchen.npz"
    np.savez(path, x=train.x[::10], y=train.y[::10], classes=np.array(train.classes))
    return path


@dataclass
class Installed:
    seconds: float
    output: str


@pytest.fixture(scope="session")
def installed(board: Userland, exchange: Path, hub: Layout, device_data: Path) -> Installed:
    """The Pi owner's one step (docs/install.md), as root inside the board: venv, tinyfed[device], bundle, unit.

    tinyfed comes as a wheel built from this checkout (it stands for PyPI's); every dependency comes from the
    package index the host's pip uses, as aarch64 wheels."""
    wheel = build_wheel(exchange / "wheel")
    bundle = exchange / f"{DEVICE}.tar.gz"
    shutil.copy2(hub.root / "devices" / f"{DEVICE}.tar.gz", bundle)
    start = time.monotonic()
    proc = board.run(
        ["bash", str(INSTALL_SCRIPT), "--bundle", str(bundle), "--data", str(device_data), "--from", str(wheel)],
        timeout=1800,
    )
    return Installed(seconds=time.monotonic() - start, output=proc.stdout + proc.stderr)
