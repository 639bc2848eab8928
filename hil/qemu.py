"""The C reference board (``firmware/``) under QEMU: build it, write its board image, run it behind a pty.

``tinyfed hil qemu --board mps2-an386`` builds the firmware with ``make`` when a source is newer than the
ELF (Debian's ``gcc-arm-none-eabi`` and ``libnewlib-arm-none-eabi``), writes the board image (its chip id,
its local training data from the same loader the Python board uses, the flash file's name), and starts
``qemu-system-arm`` with the board's UART0 on a pty; it prints ``pty: /dev/pts/N`` as ``tinyfed hil
emulate`` does.

Why mps2-an386: a Cortex-M4F (hardware single-precision float, which the last-layer training uses) on
QEMU's MPS2 board, whose 4 MiB ZBT SSRAMs hold the 256 KiB program flash, the 1 MiB model flash and the
256 KiB of RAM the firmware links into (the HAR board's budget), with 16 MiB of PSRAM for the board image.
mps2-an385 (a Cortex-M3, no FPU: float in software) runs the same firmware for comparison.

What survives what: the model flash lives in the emulated SSRAM, which QEMU keeps across a reset the
firmware or the host asks for; it is kept in step with ``--flash-file`` through Arm semihosting, so it
also survives stopping QEMU (a power cycle). RAM, the link and any transfer in progress do not.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.children import tied_to_this_process
from edge_runtime.errors import ExitCode, TinyfedError
from edge_runtime.local_training import LocalData

MACHINES = {"mps2-an386": "an386", "mps2-an385": "an385"}
FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware"
FLASH_BYTES = 1 << 20
IMAGE_ADDRESS = 0x21000000
IMAGE_DATA_OFFSET = 4096
PTY_LINE = re.compile(rb"char device redirected to (/dev/pts/\d+) \(label serial0\)")


class QemuError(TinyfedError):
    """The toolchain, QEMU or the firmware sources are missing, or QEMU did not start; the message says which."""

    exit_code = ExitCode.BAD_INPUT


def check_flash_file(path: Path) -> None:
    """A flash file that exists must be a board's (1 MiB): anything else is refused and left as it is."""
    if path.exists() and path.stat().st_size != FLASH_BYTES:
        raise QemuError(
            f"--flash-file {path}: {path.stat().st_size} bytes, the board's flash is {FLASH_BYTES}; "
            "not a board's flash file (left as it is)"
        )


def elf_path(machine: str) -> Path:
    return FIRMWARE_DIR / "build" / MACHINES[machine] / "tinyfed.elf"


def build_firmware(machine: str) -> Path:
    """``make`` in firmware/ (a no-op when the ELF is newer than every source): the ELF's path."""
    if machine not in MACHINES:
        raise QemuError(f"--board {machine!r}: choose one of {', '.join(MACHINES)}")
    if not (FIRMWARE_DIR / "Makefile").is_file():
        raise QemuError(f"{FIRMWARE_DIR}: the firmware sources are not there (run from a tinyfed checkout)")
    for tool in ("make", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            raise QemuError(
                f"{tool} not found: apt-get install make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
            )
    done = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), f"MACHINE={MACHINES[machine]}"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise QemuError(f"building the firmware failed:\n{done.stdout}{done.stderr}")
    return elf_path(machine)


def dataset_blob(data: LocalData) -> bytes:
    """The board's training data in the layout firmware/include/dataset.h reads."""
    train, held = data.train, data.evaluate
    features = int(np.prod(train.x.shape[1:]))
    classes = list(map(str, train.classes))
    if len(classes) > 255:
        raise QemuError(f"{len(classes)} classes: the board's labels are one byte")
    out = bytearray(b"TFDS" + struct.pack("<IIIII", 1, features, len(classes), len(train), len(held)))
    for part in (train, held):
        out += np.ascontiguousarray(part.x, "<f4").reshape(len(part), features).tobytes() if len(part) else b""
        out += np.asarray(part.y, np.uint8).tobytes()
    names = "\n".join(classes).encode()
    out += struct.pack("<I", len(names)) + names
    return bytes(out)


def board_image(board_id: str, data: LocalData | None, flash_file: Path | None) -> bytes:
    """Header (magic, version, chip id, data length, flags, flash file name) then the data at 4 KiB."""
    blob = dataset_blob(data) if data is not None and len(data.train) else b""
    ident = board_id.encode()
    if not 0 < len(ident) < 56:
        raise QemuError(f"--board-id {board_id!r}: 1 to 55 bytes")
    name = str(flash_file).encode() if flash_file is not None else b""
    if len(name) > IMAGE_DATA_OFFSET - 73:
        raise QemuError(f"--flash-file {flash_file}: path too long for the board image")
    header = b"TFBI" + struct.pack("<I", 1) + ident.ljust(56, b"\0") + struct.pack("<I", len(blob))
    header += bytes([1 if flash_file is not None else 0]) + b"\0\0\0" + name + b"\0"
    return header.ljust(IMAGE_DATA_OFFSET, b"\0") + blob


@dataclass
class QemuBoard:
    """One QEMU process running the firmware; ``path`` is its UART's pty."""

    machine: str
    image: Path
    flash_file: Path | None
    icount: bool = False  # -icount shift=0: one instruction is one nanosecond of the virtual clock
    process: subprocess.Popen[bytes] | None = None
    path: str = ""
    monitor: str = ""  # QEMU's monitor socket: reset() presses the board's reset button through it

    def start(self, timeout: float = 30.0) -> QemuBoard:
        if shutil.which("qemu-system-arm") is None:
            raise QemuError("qemu-system-arm not found: apt-get install qemu-system-arm")
        elf = elf_path(self.machine)
        if self.flash_file is not None:
            check_flash_file(self.flash_file)
            if not self.flash_file.exists():
                self.flash_file.write_bytes(b"\xff" * FLASH_BYTES)  # erased flash
        self.monitor = os.path.join(tempfile.mkdtemp(prefix="tinyfed-qemu-"), "monitor.sock")
        command = ["qemu-system-arm", "-M", self.machine, "-display", "none", "-serial", "pty"]
        command += ["-monitor", f"unix:{self.monitor},server=on,wait=off"]
        command += ["-kernel", str(elf), "-device", f"loader,file={self.image},addr={IMAGE_ADDRESS:#x},force-raw=on"]
        if self.flash_file is not None:
            command += ["-semihosting-config", "enable=on,target=native"]
        if self.icount:
            command += ["-icount", "shift=0"]
        self.process = subprocess.Popen(
            tied_to_this_process(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.process.stdout is not None
        seen = b""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk
                match = PTY_LINE.search(seen)
                if match:
                    self.path = match.group(1).decode()
                    return self
            elif self.process.poll() is not None:
                break
        self.stop()
        raise QemuError(f"qemu-system-arm did not give its UART a pty: {seen.decode(errors='replace').strip()}")

    def reset(self) -> None:
        """The reset button (QEMU's ``system_reset``): RAM is lost, the flash and the pty stay."""
        self._monitor(b"system_reset")

    def pause(self) -> None:
        """Stop the emulated CPU (QEMU's ``stop``): the board reads and answers nothing until :meth:`resume`;
        what the host writes meanwhile waits in the pty."""
        self._monitor(b"stop")

    def resume(self) -> None:
        """Run the CPU again after :meth:`pause` (QEMU's ``cont``)."""
        self._monitor(b"cont")

    def _monitor(self, command: bytes) -> None:
        """One command on QEMU's monitor; returns once QEMU has read it (it echoes the command)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.monitor)
            sock.sendall(command + b"\n")
            seen = b""
            while command not in seen:  # QEMU echoes the command once it has read it
                chunk = sock.recv(4096)
                if not chunk:
                    break
                seen += chunk

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        if self.monitor:
            shutil.rmtree(os.path.dirname(self.monitor), ignore_errors=True)


def start_board(
    machine: str,
    workdir: Path,
    board_id: str,
    data: LocalData | None,
    flash_file: Path | None,
    icount: bool = False,
) -> QemuBoard:
    """Build if needed, write the image into ``workdir``, start QEMU (``icount``: count instructions)."""
    if flash_file is not None:
        check_flash_file(flash_file)
    build_firmware(machine)
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"{board_id}.img"
    image.write_bytes(board_image(board_id, data, flash_file.resolve() if flash_file is not None else None))
    return QemuBoard(machine, image, flash_file.resolve() if flash_file is not None else None, icount).start()
