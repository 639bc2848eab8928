"""``tinyfed device run --config device.toml``: a long-running federation member.

Exit codes (``edge_runtime.errors.ExitCode``): 0 after SIGTERM/SIGINT (a
clean stop: death announced, outbox kept on disk), 2 for a configuration or
data error (``ConfigError``, ``DataError``), 3 when the broker cannot be
reached at start (``TransportError``; unless ``--keep-trying``), 5 when
another client connected with this device's id (``ClientIdConflict``: two
devices given the same id), at any time; a supervisor should not restart
on 5, or the two would take the id from each other for ever.

A device whose ``[data] source`` is its own .csv/.npz file takes up new
rows without a restart: the file is looked at before each task and, while
the device is idle, once a second; a change is read and announced in a
new birth message (docs/data.md).
"""

from __future__ import annotations

import argparse
import logging

from ..config import setting
from ..data.errors import DataError
from ..device_config import DeviceConfig
from ..model.backends import default_backend, get_backend
from ..model.errors import BackendUnavailableError
from ..paths import check_storage_dir
from ..shutdown import stop_on_signals

log = logging.getLogger(__name__)


def check_backend(config: DeviceConfig) -> None:
    """The interpreter ``[device] backend`` names loads here (or, for ``auto``, some interpreter does)."""
    name = config.device.backend
    where = f"{setting(config.source, 'device', 'backend')} = {name!r}"
    if name == "auto":
        try:  # the first that loads: loading every interpreter would only cost the agent RSS
            default_backend()
        except BackendUnavailableError as exc:
            missing = f"{where}: no interpreter is installed: pip install 'tinyfed[litert]'"
            raise BackendUnavailableError(missing) from exc
        return
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{where}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from ..logformat import configure_logging

    configure_logging(args.verbose, getattr(args, "log_format", "text"))
    config = DeviceConfig.load(args.config)
    check_storage_dir(config.storage, setting(config.source, "device", "storage"))
    check_backend(config)
    from ..agent import DeviceAgent
    from ..transport.mqtt import ClientIdConflict, TransportError

    try:
        agent = DeviceAgent(config)
    except DataError as exc:
        raise DataError(f"{setting(config.source, 'data', 'source')} = {config.data.source!r}: {exc}") from exc
    stop = stop_on_signals()
    agent.link.on_fatal_hooks.append(lambda conflict: stop.set())
    agent.start()
    print(
        f"device {config.device.id} of federation {config.device.federation}: {len(agent.data.train)} training "
        f"samples, backend {agent.backend.name}, broker {config.broker.url}",
        flush=True,
    )
    if not args.keep_trying:
        try:
            agent.link.require_connected(config.device.connect_timeout)
        except ClientIdConflict:
            agent.stop(timeout=1.0)
            raise
        except TransportError as exc:
            agent.stop(timeout=1.0)
            raise TransportError(
                f"cannot reach the MQTT broker at {config.broker.url}: {exc}. "
                f"Check [broker] url in {args.config} (or TINYFED_BROKER_URL), or pass --keep-trying."
            ) from exc
    while not stop.wait(1.0):  # set by SIGTERM/SIGINT, or by the link when another client takes our id
        try:
            agent.refresh_data(idle_only=True)
        except DataError as exc:  # said once per change of the file; the last good data stays, tasks report it
            log.error("device %s: cannot read its data: %s", config.device.id, exc)
    agent.stop()
    if agent.link.fatal is not None:
        raise agent.link.fatal
    print(f"device {config.device.id} stopped cleanly", flush=True)
    return 0
