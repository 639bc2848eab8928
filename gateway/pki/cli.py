"""The ``tinyfed provision`` actions: run a provisioning step, print what it wrote (paths, never keys)."""

from __future__ import annotations

import argparse
import os
import stat

from . import provision
from .provision import Written


def _report(what: str, out: Written) -> int:
    print(what)
    for path in out.files:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        print(f"  {mode:04o}  {path}")
    if out.retired is not None:
        print(f"moved the old material to {out.retired}")
    for note in out.notes:
        print(f"- {note}")
    return 0


def init(args: argparse.Namespace) -> int:
    out = provision.init(
        args.dir, args.federation, args.broker_host, port=args.port, broker_dir=args.broker_dir,
        tls_key=args.tls_key, days=args.days, force=args.force,
    )  # fmt: skip
    return _report(f"federation {args.federation} in {args.dir}:", out)


def device(args: argparse.Namespace) -> int:
    out = provision.add_devices(
        args.dir, args.devices, install_dir=args.install_dir, storage=args.storage, make_archive=args.archive,
        force=args.force, days=args.days,
    )  # fmt: skip
    return _report(f"enrolled: {' '.join(args.devices)}", out)


def revoke(args: argparse.Namespace) -> int:
    return _report(f"device {args.device} revoked:", provision.revoke(args.dir, args.device, reason=args.reason))


def listing(args: argparse.Namespace) -> int:
    meta, registry = provision.listing(args.dir)
    print(f"federation {meta.federation}, broker {meta.broker_url}, gateway {meta.gateway_identity}")
    if not registry.keys:
        print("no devices enrolled")
    for key in registry.keys:
        state = "valid" if key.active else f"REVOKED {key.revoked} ({key.reason})"
        print(f"  {key.device:24s} key {key.key_id.hex()}  cert {key.tls_serial:x}  added {key.added}  {state}")
    return 0
