"""``tinyfed hil emulate``: an emulated board on a pty, for the bridge, a bench script or a terminal.

Prints ``pty: /dev/pts/N`` (the path to open) and the board's memory
budget, then serves until SIGTERM/SIGINT (exit 0); bad options raise
``ConfigError``, ``FaultSpecError`` or ``DataError`` (exit 2). The flash
file keeps the model and the error-feedback residual from one run to the next.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from edge_runtime.config import ConfigError
from edge_runtime.data.files import parse_label_column
from edge_runtime.device_config import DataSection
from edge_runtime.local_training import LocalData, load_local_data
from edge_runtime.paths import check_output_file
from edge_runtime.shutdown import stop_on_signals

from .board import BoardSpec, EmulatedBoard, parse_size
from .faults import FaultPlan


def emulate(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = BoardSpec(
        ram=_size("--ram", args.ram),
        flash=_size("--flash", args.flash),
        baud=args.baud,
        max_frame=args.max_frame,
        board_id=args.board_id,
        patch=not getattr(args, "no_patch", False),
    )
    faults = FaultPlan.parse(args.faults)
    check_output_file(args.flash_file, "--flash-file")  # kept across runs: a folder or a missing one is a typo
    data: LocalData | None = None
    if args.data != "none":
        column = parse_label_column(args.label_column)
        section = DataSection(source=args.data, group=args.group, shard=None if args.group is not None else args.shard,
                              label_column=-1 if column is None else column)  # fmt: skip
        data = load_local_data(section)
    board = EmulatedBoard(args.flash_file, spec, data=data, faults=faults).start()
    stop = stop_on_signals()
    print(f"pty: {board.path}", flush=True)
    print(
        f"board {spec.board_id}: {spec.ram // 1024} KiB RAM, {spec.flash // 1024} KiB flash ({args.flash_file}), "
        f"{spec.baud} baud, {len(data.train) if data else 0} training samples"
        + ("" if spec.patch else ", whole models only (no patches)")
        + (f", faults {args.faults}" if args.faults else ""),
        flush=True,
    )
    print(board.memory_report().describe(), flush=True)
    stop.wait()
    board.stop()
    return 0


def _size(option: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from exc


def qemu(args: argparse.Namespace) -> int:
    """``tinyfed hil qemu``: the C firmware under QEMU, its UART on a pty (hil/qemu.py)."""
    from .qemu import start_board

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    check_output_file(args.flash_file, "--flash-file")
    data: LocalData | None = None
    if args.data != "none":
        section = DataSection(source=args.data, group=args.group, shard=None if args.group is not None else args.shard)
        data = load_local_data(section)
    images = tempfile.TemporaryDirectory(prefix="tinyfed-qemu-")  # QEMU re-reads the board image at every reset
    board = start_board(args.board, Path(images.name), args.board_id, data, args.flash_file)
    stop = stop_on_signals()
    print(f"pty: {board.path}", flush=True)
    print(
        f"board {args.board_id}: QEMU {args.board}, 256 KiB RAM, 1024 KiB flash ({args.flash_file}), "
        f"{len(data.train) if data else 0} training samples",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            if board.process is not None and board.process.poll() is not None:
                raise ConfigError(f"qemu-system-arm exited with status {board.process.returncode}")
    finally:
        board.stop()
        images.cleanup()
    return 0
