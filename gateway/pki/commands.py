"""``tinyfed provision init|device|revoke|list``, registered as an entry point; cryptography loads only when run."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.command import Command, Handler, add_actions


def _handler(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from . import cli

        result: int = getattr(cli, name)(args)
        return result

    return run


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser)
    i = actions.add_parser("init", help="a new federation: CA, broker TLS + ACL + CRL, the gateway's keys")
    i.add_argument("--federation", required=True, help="the federation's name (the gateway's [gateway] federation)")
    i.add_argument("--out", "--dir", dest="dir", type=Path, required=True, help="the provisioning directory")
    i.add_argument(
        "--broker-host",
        action="append",
        required=True,
        metavar="HOST",
        help="name or address devices reach the broker at (repeat for more; the first goes in URLs)",
    )
    i.add_argument("--port", type=int, default=8883, help="the broker's TLS port")
    i.add_argument(
        "--broker-dir",
        default="/etc/mosquitto/tinyfed",
        help="where the hub's Mosquitto will read DIR/broker's files (the paths in mosquitto.conf)",
    )
    i.add_argument(
        "--tls-key",
        choices=("p256", "ed25519"),
        default="p256",
        help="TLS key type (p256: every TLS stack takes it; see docs/security.md)",
    )
    i.add_argument("--days", type=int, default=20 * 365, help="validity of the CA and the hub's certificates")
    i.add_argument("--force", action="store_true", help="move an existing federation in DIR to DIR/retired/")
    i.set_defaults(handler=_handler("init"))
    d = actions.add_parser("device", help="enrol devices: a bundle each (certificate, keys, device.toml)")
    d.add_argument("devices", metavar="ID", nargs="+", help="the devices' ids (each its certificate's name)")
    d.add_argument("--dir", type=Path, required=True, help="the provisioning directory (from init)")
    d.add_argument(
        "--install-dir",
        default="/etc/tinyfed",
        help="where the bundle goes on the device ({id} is replaced by the device's id)",
    )
    d.add_argument("--storage", default="/var/lib/tinyfed", help="the device's storage directory ({id} too)")
    d.add_argument("--archive", action="store_true", help="also write DIR/devices/ID.tar.gz")
    d.add_argument("--days", type=int, default=10 * 365, help="validity of the device's certificate")
    d.add_argument("--force", action="store_true", help="replace an enrolled device: its old identity is revoked")
    d.set_defaults(handler=_handler("device"))
    r = actions.add_parser("revoke", help="revoke a device at the broker (CRL, ACL) and at the gateway")
    r.add_argument("device", metavar="ID", help="the device to revoke")
    r.add_argument("--dir", type=Path, required=True, help="the provisioning directory (from init)")
    r.add_argument("--reason", default="revoked by the operator", help="recorded in the gateway's key registry")
    r.set_defaults(handler=_handler("revoke"))
    s = actions.add_parser("list", help="the enrolled and revoked devices")
    s.add_argument("--dir", type=Path, required=True, help="the provisioning directory (from init)")
    s.set_defaults(handler=_handler("listing"))


# "gateway" for the hub's side it writes (and paho, which the gateway reading it has), "sign" for cryptography.
PROVISION = Command(
    "provision", "a federation's trust material: CA, broker TLS and ACL, device bundles", _configure,
    ("gateway", "sign"),
)  # fmt: skip
