"""``tinyfed bridge run``, registered as an entry point; serial and MQTT code load only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.command import Command, add_actions


def _run(args: argparse.Namespace) -> int:
    from .cli import run

    return run(args)


def _configure(parser: argparse.ArgumentParser) -> None:
    b = add_actions(parser).add_parser(
        "run", help="bridge every board on the given ports to the federation's MQTT broker"
    )
    b.add_argument(
        "--port",
        action="append",
        required=True,
        help="pyserial URL: /dev/ttyACM0, socket://host:port, rfc2217://host:port, a pty; "
        "append #ID to name the device (default: the board's chip id). Repeat for more boards.",
    )
    b.add_argument("--baud", type=int, default=115200)
    b.add_argument("--broker", default=None, help="mqtt://host:port (default: TINYFED_BROKER_URL or 127.0.0.1:1883)")
    b.add_argument("--federation", default="default")
    b.add_argument("--storage", type=Path, default=Path("tinyfed-bridge"), help="per-board models and outboxes")
    b.add_argument("--heartbeat", type=float, default=5.0, help="seconds between STATUS checks of each board")
    b.add_argument("-v", "--verbose", action="store_true")
    b.set_defaults(handler=_run)


BRIDGE = Command("bridge", "microcontrollers on serial ports as federation devices", _configure, ("bridge",))
