"""``tinyfed hil emulate``, ``hil qemu`` and ``bridge run`` as a user starts them: real processes, a real pty."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("serial")
pytest.importorskip("tflite_micro")

from firmware_bridge.driver import BoardDriver


def tinyfed(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tinyfed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def test_hil_emulate_prints_a_pty_that_a_host_driver_opens(tmp_path: Path) -> None:
    flash = tmp_path / "board.flash"
    proc = tinyfed("hil", "emulate", "--baud", "921600", "--board-id", "cli-board", "--data", "none",
                   "--flash-file", str(flash), "--faults", "seed=3", "--no-patch")  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("pty: "), first + (proc.stderr.read() if proc.stderr else "")
        with BoardDriver(first.removeprefix("pty: ").strip(), baud=921600) as driver:
            hello = driver.hello()
            assert hello.board_id == "cli-board" and hello.ram == 256 * 1024 and hello.samples == 0
            assert not hello.patch  # --no-patch: it declares whole models only
        assert flash.stat().st_size == 1 << 20
    finally:
        proc.terminate()
        assert proc.wait(30) == 0  # SIGTERM is a clean stop


@pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="needs qemu-system-arm and gcc-arm-none-eabi (apt; .ci/run installs them)",
)
def test_hil_qemu_prints_the_c_boards_pty_that_a_host_driver_opens(tmp_path: Path) -> None:
    flash = tmp_path / "qemu.flash"
    proc = tinyfed("hil", "qemu", "--board-id", "cli-qemu", "--data", "none", "--flash-file", str(flash))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("pty: "), first + (proc.stderr.read() if proc.stderr else "")
        with BoardDriver(first.removeprefix("pty: ").strip(), baud=115200) as driver:
            hello = driver.hello()
            assert hello.board_id == "cli-qemu" and hello.firmware.startswith("tinyfed-c") and hello.samples == 0
        assert flash.stat().st_size == 1 << 20
    finally:
        proc.terminate()
        assert proc.wait(30) == 0  # SIGTERM is a clean stop, QEMU with it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hil", "emulate", "--faults", "ber=lots"], "faults 'ber=lots'"),
        (["hil", "emulate", "--faults", "gremlins=1"], "unknown fault gremlins"),
        (["hil", "emulate", "--ram", "much"], "is not a size"),
        (["bridge", "run", "--port", "/dev/ttyACM0#not an id"], "device id"),
        (["hil", "qemu", "--board", "mps2-an999", "--data", "none"], "--board 'mps2-an999'"),
        (["hil", "qemu", "--data", "none", "--flash-file", "small.flash"], "not a board's flash file"),
    ],
)
def test_bad_options_are_named_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "small.flash").write_bytes(b"precious")  # a file that is no board's flash: refused, kept
    proc = tinyfed(*args, cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and message in err, err
    assert (tmp_path / "small.flash").read_bytes() == b"precious"
