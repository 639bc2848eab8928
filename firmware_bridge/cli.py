"""``tinyfed bridge run``: runs until SIGTERM/SIGINT, then announces every board's death and stops.

Exit codes (``edge_runtime.errors.ExitCode``): 0 after a signal, 2 for bad options (``ConfigError``),
5 when another MQTT client took a board's client id (``ClientIdConflict``: the same board id bridged
twice); a supervisor should not restart on 5.
"""

from __future__ import annotations

import argparse
import logging
import os

from edge_runtime.config import ConfigError, broker_section
from edge_runtime.member import MemberSettings
from edge_runtime.shutdown import stop_on_signals

from .bridge import Bridge, PortSpec


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ports = [_port(text) for text in args.port]
    broker = broker_section({"broker": {"url": args.broker}} if args.broker else {}, "--broker", os.environ)
    settings = MemberSettings(device_id="", federation=args.federation, storage=args.storage, broker=broker)
    bridge = Bridge(ports, settings, baud=args.baud, heartbeat=args.heartbeat).start()
    stop = stop_on_signals()
    print(f"bridging {len(ports)} port(s) to {broker.url}, federation {args.federation}", flush=True)
    while not stop.wait(0.5) and not bridge.conflicted.is_set():
        pass
    bridge.stop()
    if bridge.conflict is not None:
        raise bridge.conflict
    print("bridge stopped", flush=True)
    return 0


def _port(text: str) -> PortSpec:
    try:
        return PortSpec.parse(text)
    except ValueError as exc:
        raise ConfigError(f"--port {text!r}: {exc}") from exc
