"""pytest plugin (entry point ``pytest11``): the same HIL tests against the emulator or a real board.

Fixtures:

- ``hil_board``: a :class:`HilTarget` with the ``url`` and ``baud`` to open, and ``emulated`` (the
  :class:`~hil.board.EmulatedBoard`, for fault injection and flash inspection) or None on a real board.
- ``dut``: a connected :class:`~firmware_bridge.driver.BoardDriver`, handshake done, closed after the test.
- ``hil_board_options``: override it in a test module to change the emulated board (RAM, data, faults).

Options: ``--hil-port URL`` runs against a real board (``/dev/ttyACM0``, ``socket://...``,
``rfc2217://...``); ``--hil-qemu MACHINE`` gives every test a fresh C firmware board under QEMU
(``mps2-an386``; hil/qemu.py); without either every test gets a fresh emulated board. ``--hil-baud`` sets the
rate (default 921600 on the emulator, 115200 on a real board).

Markers: ``hil_emulated`` for tests that need the emulator (fault injection, flash inspection),
skipped with ``--hil-port`` or ``--hil-qemu``, with the marker's ``reason=`` when it gives one;
``hil_real`` for tests that only make sense on hardware, skipped
on the emulator.

Nothing heavy is imported until a fixture is used, so the plugin costs nothing in test runs that
do not touch a board.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from firmware_bridge.driver import BoardDriver

    from .board import EmulatedBoard
    from .qemu import QemuBoard

EMULATOR_BAUD = 921600
REAL_BOARD_BAUD = 115200


@dataclass
class HilTarget:
    url: str
    baud: int
    emulated: EmulatedBoard | None = None
    qemu: QemuBoard | None = None


@dataclass
class BoardOptions:
    """How the emulated board of one test is made; a test module overrides ``hil_board_options``."""

    ram: int = 256 * 1024
    data: str = "digits"  # the board's local data source, or "" for none
    shard: str = "0/10"
    faults: str = ""  # as ``tinyfed hil emulate --faults``
    max_frame: int = 4096
    ops: tuple[str, ...] | None = None  # None: every kernel the reference firmware has
    extra: dict[str, Any] = field(default_factory=dict)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tinyfed-hil", "tinyfed hardware-in-the-loop")
    group.addoption("--hil-port", default=None, help="serial URL of a real board; default: a fresh emulated board")
    group.addoption("--hil-qemu", default=None, help="QEMU machine (mps2-an386) running the C firmware, fresh per test")
    group.addoption("--hil-baud", type=int, default=None, help="baud rate (emulator 921600, real board 115200)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil_emulated: needs the emulated board (faults, flash); skipped on hardware")
    config.addinivalue_line("markers", "hil_real: needs a real board (--hil-port); skipped on the emulator")


def pytest_runtest_setup(item: pytest.Item) -> None:
    real = item.config.getoption("--hil-port") is not None or item.config.getoption("--hil-qemu") is not None
    marker = item.get_closest_marker("hil_emulated")
    if real and marker is not None:
        why = marker.kwargs.get("reason", "fault injection or flash inspection")
        pytest.skip(f"needs the emulated board ({why}); the board under test is firmware")
    if not real and item.get_closest_marker("hil_real"):
        pytest.skip("needs a real board: pass --hil-port")


@pytest.fixture
def hil_board_options() -> BoardOptions:
    return BoardOptions()


@pytest.fixture
def hil_board(request: pytest.FixtureRequest, tmp_path: Path, hil_board_options: BoardOptions) -> Iterator[HilTarget]:
    port = request.config.getoption("--hil-port")
    baud = request.config.getoption("--hil-baud")
    if port is not None:
        yield HilTarget(port, baud or REAL_BOARD_BAUD)
        return
    machine = request.config.getoption("--hil-qemu")
    if machine is not None:
        yield from _qemu_board(machine, tmp_path, baud or REAL_BOARD_BAUD, hil_board_options)
        return
    pytest.importorskip("tflite_micro", reason="the emulated board runs TFLite Micro: pip install 'tinyfed[micro]'")
    pytest.importorskip("serial", reason="pyserial: pip install 'tinyfed[hil]'")
    from edge_runtime.device_config import DataSection
    from edge_runtime.local_training import load_local_data

    from .board import BoardSpec, EmulatedBoard
    from .faults import FaultPlan

    opts = hil_board_options
    spec = BoardSpec(ram=opts.ram, baud=baud or EMULATOR_BAUD, max_frame=opts.max_frame, **opts.extra)
    if opts.ops is not None:
        spec.ops = opts.ops
    data = load_local_data(DataSection(source=opts.data, shard=opts.shard)) if opts.data else None
    board = EmulatedBoard(tmp_path / "board.flash", spec, data=data, faults=FaultPlan.parse(opts.faults)).start()
    try:
        yield HilTarget(board.path, spec.baud, board)
    finally:
        board.stop()


def _qemu_board(machine: str, tmp_path: Path, baud: int, opts: BoardOptions) -> Iterator[HilTarget]:
    from edge_runtime.device_config import DataSection
    from edge_runtime.local_training import load_local_data

    from .qemu import start_board

    data = load_local_data(DataSection(source=opts.data, shard=opts.shard)) if opts.data else None
    board = start_board(machine, tmp_path, "qemu-0001", data, tmp_path / "board.flash")
    try:
        yield HilTarget(board.path, baud, qemu=board)
    finally:
        board.stop()


@pytest.fixture
def dut(hil_board: HilTarget) -> Iterator[BoardDriver]:
    from firmware_bridge.driver import BoardDriver

    driver = BoardDriver(hil_board.url, baud=hil_board.baud, answer_timeout=60.0)
    try:
        driver.hello()
        yield driver
    finally:
        driver.close()
