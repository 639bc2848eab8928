"""``tinyfed bridge run``, registered as an entry point; serial and MQTT code load only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.command import Command, add_actions
from edge_runtime.transport.topics import DEFAULT_FEDERATION


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
    b.add_argument("--baud", type=int, default=115200, help="serial line speed of every port")
    b.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port or mqtts://host:port (default: TINYFED_BROKER_URL, else mqtt://127.0.0.1:1883); "
        "other TINYFED_BROKER_* variables set credentials and TLS files as in device.toml's [broker]",
    )
    b.add_argument(
        "--federation",
        default=DEFAULT_FEDERATION,
        help="the federation the boards join: the gateway's [gateway] federation",
    )
    b.add_argument("--storage", type=Path, default=Path("tinyfed-bridge"), help="per-board models and outboxes")
    trust = b.add_mutually_exclusive_group()
    trust.add_argument(
        "--bundles",
        type=Path,
        default=None,
        help="a folder holding one provisioned bundle per board, DIR/ID/ as `tinyfed provision device ID` writes "
        "it: each board connects with its own certificate and signs with its own key (docs/security.md)",
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="no signatures and no per-board identities: sign nothing, believe any model and task (tests only)",
    )
    b.add_argument(
        "--max-task-seconds",
        type=float,
        default=86400.0,
        help="refuse a task whose deadline lies further ahead than this",
    )
    b.add_argument("--heartbeat", type=float, default=5.0, help="seconds between STATUS checks of each board")
    b.add_argument(
        "--connect-timeout",
        type=float,
        default=15.0,
        help="seconds to reach the broker at start before exiting 3",
    )
    b.add_argument("--keep-trying", action="store_true", help="wait for an unreachable broker instead of exiting 3")
    b.add_argument("-v", "--verbose", action="store_true", help="log every frame and MQTT event")
    b.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port (the 'metrics' extra; default: none)")  # fmt: skip
    b.add_argument("--metrics-host", default="127.0.0.1", help="the metrics endpoint's address (default 127.0.0.1)")
    b.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text (default) or one JSON object per line, for journald, Loki or jq")  # fmt: skip
    b.set_defaults(handler=_run)


BRIDGE = Command("bridge", "microcontrollers on serial ports as federation devices", _configure, ("bridge",))
