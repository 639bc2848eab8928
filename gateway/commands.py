"""``tinyfed gateway run|status|rollback|release|export``, registered as entry points; the service loads when run.

``export`` is the model export the issue calls ``tinyfed model export``: it reads the gateway's store, and the
core's ``model`` command may not import the gateway (the import contracts in pyproject.toml), so it lives here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.command import Command, add_actions


def _run(args: argparse.Namespace) -> int:
    from .cli import run
    from .config import GatewayConfig

    GatewayConfig.load(args.config).check_files()  # a bad path is named now, not as a traceback from the service
    return run(args)


def _status(args: argparse.Namespace) -> int:
    from .cli import status

    return status(args)


def _rollback(args: argparse.Namespace) -> int:
    from .cli import rollback
    from .config import GatewayConfig

    GatewayConfig.load(args.config).require_state()  # rollback would otherwise start an empty store

    return rollback(args)


def _release(args: argparse.Namespace) -> int:
    from .robustness.operator import release_command

    return release_command(args)


def _export(args: argparse.Namespace) -> int:
    from .cli import export

    return export(args)


CONFIG_HELP = "gateway.toml (keys overridable by TINYFED_<TABLE>_<KEY>; see docs/gateway.md)"


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser)
    g = actions.add_parser("run", help="run the federation described by gateway.toml")
    g.add_argument("--config", type=Path, required=True, help=CONFIG_HELP)
    g.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    g.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text (default) or one JSON object per line, for journald, Loki or jq")  # fmt: skip
    g.set_defaults(handler=_run)
    g = actions.add_parser("status", help="rounds, updates, refusals and devices from the gateway's store")
    g.add_argument("--config", type=Path, required=True, help=CONFIG_HELP)
    g.add_argument("--last", type=int, default=20, help="show this many rounds, refusals and failures")
    g.add_argument("--devices", type=int, default=50, help="list at most this many devices")
    g.add_argument("--json", action="store_true", help="one JSON document (the dashboard's), for scripts and jq")
    g.set_defaults(handler=_status)
    g = actions.add_parser("rollback", help="make an earlier model version current (gateway stopped)")
    g.add_argument("--config", type=Path, required=True, help=CONFIG_HELP)
    g.add_argument("--to", required=True, help="version hex prefix, as `gateway status` prints it")
    g.set_defaults(handler=_rollback)
    g = actions.add_parser(
        "release",
        help="put a device the anomaly detector quarantined back into the federation; safe while the gateway runs",
        description="Reset a quarantined device's reliability to 1: it is selected again from the next round "
        "(`tinyfed gateway status` lists the quarantined devices and why). docs/robustness.md.",
    )
    g.add_argument("device", help="the device id, as `gateway status` prints it")
    g.add_argument("--config", type=Path, required=True, help=CONFIG_HELP)
    g.set_defaults(handler=_release)
    g = actions.add_parser(
        "export",
        help="write the current (or a chosen) model version from the store to a file; safe while the gateway runs",
        description="Copy a model version out of the gateway's store, verified by its sha256. Read-only: it may "
        "run beside a running gateway. Use the file with `tinyfed model predict` or any TFLite interpreter.",
    )
    g.add_argument("--config", type=Path, required=True, help="the gateway's gateway.toml (its [gateway] storage)")
    g.add_argument("--version", help="version hex prefix, as `gateway status` prints it (default: the current one)")
    g.add_argument("--out", type=Path, required=True, help="the .tflite file to write")
    g.set_defaults(handler=_export)


GATEWAY = Command("gateway", "the hub side: rounds, aggregation, model publishing", _configure, ("gateway",))
