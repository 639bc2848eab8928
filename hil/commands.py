"""``tinyfed hil emulate`` and ``tinyfed hil qemu``, registered as entry points; the boards load only when run."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.command import Command, add_actions


def _emulate(args: argparse.Namespace) -> int:
    from .cli import emulate

    return emulate(args)


def _qemu(args: argparse.Namespace) -> int:
    from .cli import qemu

    return qemu(args)


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser)
    e = actions.add_parser("emulate", help="run an emulated board behind a pty and print its path")
    e.add_argument("--ram", default="256k", help="RAM budget (256k, 1m, bytes)")
    e.add_argument("--flash", default="1m", help="flash size")
    e.add_argument("--flash-file", type=Path, default=Path("tinyfed-board.flash"), help="survives restarts")
    e.add_argument("--baud", type=int, default=115200, help="the emulated UART's line speed")
    e.add_argument("--max-frame", type=int, default=4096, help="largest frame payload the firmware buffers")
    e.add_argument("--board-id", default="emu-0001", help="the chip id the board reports in HELLO")
    e.add_argument("--no-patch", action="store_true",
                   help="declare no model patches in HELLO: the bridge sends whole models (as the C board)")
    e.add_argument("--data", default="digits", help="the board's local data: digits, har, cmapss, ... or 'none'")
    e.add_argument("--label-column", default="-1", help="a CSV's label column: header name or index (-1 is the last)")
    e.add_argument("--shard", default="0/10", help="i/n: this board's share of the training split")
    e.add_argument("--group", type=int, help="a natural group instead (HAR subject, engine)")
    e.add_argument(
        "--faults", default="", help="ber=1e-4,drop=1e-5,reset-at=BYTE,brown-out=BYTES,slow=2,seed=N (see docs/hil.md)"
    )
    e.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    e.set_defaults(handler=_emulate)
    q = actions.add_parser("qemu", help="run the C firmware under QEMU behind a pty and print its path")
    q.add_argument("--board", default="mps2-an386", help="QEMU machine: mps2-an386 (Cortex-M4F) or mps2-an385 (M3)")
    q.add_argument(
        "--flash-file", type=Path, default=Path("tinyfed-qemu.flash"), help="the model flash; survives restarts"
    )
    q.add_argument("--board-id", default="qemu-0001", help="the chip id the board reports in HELLO")
    q.add_argument("--data", default="digits", help="the board's local data: digits, har, ... or 'none'")
    q.add_argument("--shard", default="0/10", help="i/n: this board's share of the training split")
    q.add_argument("--group", type=int, help="a natural group instead (HAR subject, engine)")
    q.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    q.set_defaults(handler=_qemu)


HIL = Command("hil", "hardware-in-the-loop: the emulated board", _configure, ("hil",))
