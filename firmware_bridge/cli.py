"""``tinyfed bridge run``: runs until SIGTERM/SIGINT, then announces every board's death and stops.

Signatures are on by default: ``--bundles DIR`` gives each board its own
provisioned identity (``DIR/<board id>/``), and without it the bridge
refuses to start unless ``--insecure`` says otherwise (with a warning).

Exit codes (``edge_runtime.errors.ExitCode``), as for ``tinyfed device run``:
0 after a signal; 2 for bad options (``ConfigError``): a serial port that
does not exist, a storage folder that cannot be written, a misspelt
``TINYFED_BROKER_*`` variable, no ``--bundles`` nor ``--insecure``, a
board's bundle missing or its key unreadable; 3 when the broker cannot be reached within
``--connect-timeout`` seconds at start (``TransportError``; unless
``--keep-trying``); 5 when another MQTT client took a board's client id
(``ClientIdConflict``: the same board id bridged twice); a supervisor
should not restart on 5.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from pathlib import Path

from edge_runtime.config import ConfigError, broker_section, check_environment, keys_of
from edge_runtime.member import MemberSettings
from edge_runtime.paths import check_storage_dir
from edge_runtime.shutdown import stop_on_signals
from edge_runtime.transport.broker_config import BrokerConfig, TransportError
from edge_runtime.trust import Bundle, MemberTrust, warn_insecure

from .bridge import Bridge, PortSpec


def run(args: argparse.Namespace) -> int:
    from edge_runtime.logformat import configure_logging

    configure_logging(args.verbose, getattr(args, "log_format", "text"))
    ports = [_port(text) for text in args.port]
    check_environment("bridge", {"broker": keys_of(BrokerConfig)})
    broker = broker_section({"broker": {"url": args.broker}} if args.broker else {}, "--broker", os.environ)
    storage = check_storage_dir(args.storage, "--storage")
    bundles = _bundles(args, ports)
    if not args.keep_trying:
        if bundles is None:
            _require_broker(broker, args.connect_timeout)
        else:
            _reachable(broker, args.connect_timeout)
    settings = MemberSettings(device_id="", federation=args.federation, storage=storage, broker=broker,
                              max_task_seconds=args.max_task_seconds, trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge(ports, settings, baud=args.baud, heartbeat=args.heartbeat, bundles=bundles)
    server = None
    if getattr(args, "metrics_port", None) is not None:
        from .metrics import start_metrics

        server, _ = start_metrics(bridge, args.metrics_host, args.metrics_port)
        print(f"metrics at http://{args.metrics_host}:{server.server_port}/metrics", flush=True)
    bridge.start()
    stop = stop_on_signals()
    print(f"bridging {len(ports)} port(s) to {broker.url}, federation {args.federation}", flush=True)
    while not stop.wait(0.5) and not bridge.conflicted.is_set():
        pass
    bridge.stop()
    if server is not None:
        server.shutdown()
        server.server_close()
    if bridge.conflict is not None:
        raise bridge.conflict
    print("bridge stopped", flush=True)
    return 0


def _bundles(args: argparse.Namespace, ports: list[PortSpec]) -> Path | None:
    """Where each board's identity is, checked now for the boards named with ``#ID``; None with ``--insecure``."""
    if args.insecure:
        warn_insecure("the bridge", "--insecure")
        return None
    if args.bundles is None:
        raise ConfigError(
            "signatures are on by default, and each board needs its own provisioned identity: give --bundles DIR "
            "with DIR/ID/ for every board (`tinyfed provision device ID` makes one; docs/security.md), or "
            "--insecure to run without signatures (tests only)"
        )
    if not args.bundles.is_dir():
        raise ConfigError(f"--bundles {args.bundles}: no such folder")
    unnamed = [port.url for port in ports if not port.device_id]
    if unnamed:
        raise ConfigError(
            f"--port {unnamed[0]}: with --bundles every port names its board, as --port '{unnamed[0]}#ID': a "
            "board's own id (HELLO) would choose which provisioned identity it gets"
        )
    for port in ports:
        if port.device_id:
            try:
                Bundle(args.bundles / port.device_id).trust(f"board {port.device_id}")
            except ConfigError as exc:
                raise ConfigError(f"--port {port.url}#{port.device_id}: {exc}") from exc
    return Path(args.bundles)


def _reachable(broker: BrokerConfig, timeout: float) -> None:
    """With one certificate per board, any MQTT probe would be a board (the broker names a client by its
    certificate) and resume that board's session, taking its queued tasks: a TCP connection says enough."""
    host, port, _ = broker.endpoint()
    try:
        socket.create_connection((host, port), timeout).close()
    except OSError as exc:
        raise TransportError(
            f"cannot reach the MQTT broker at {broker.url}: {exc.strerror or exc}. "
            "Check --broker (or TINYFED_BROKER_URL), or pass --keep-trying."
        ) from exc


def _port(text: str) -> PortSpec:
    try:
        spec = PortSpec.parse(text)
        spec.check()
    except ValueError as exc:
        raise ConfigError(f"--port {text}: {exc}") from exc
    return spec


def _require_broker(broker: BrokerConfig, timeout: float) -> None:
    """Connect once, as each board's member will, so an unreachable broker is exit 3 now, not a warning per board.

    The probe asks for no lasting session (expiry 0) under one client id per host, so repeated starts leave
    nothing behind on the broker.
    """
    from edge_runtime.transport.mqtt import MqttLink

    probe = MqttLink(dataclasses.replace(broker, session_expiry=0), f"tinyfed-bridge-probe-{socket.gethostname()}")
    probe.start()
    try:
        probe.require_connected(timeout)
    except TransportError as exc:
        raise TransportError(
            f"cannot reach the MQTT broker at {broker.url}: {exc}. "
            "Check --broker (or TINYFED_BROKER_URL), or pass --keep-trying."
        ) from exc
    finally:
        probe.stop()
