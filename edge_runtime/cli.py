"""``tinyfed``: one command, a subcommand per role.

Every subcommand imports its implementation only when run, so ``tinyfed
device ...`` on a board never loads gateway code (or an interpreter it does
not use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _model_build(args: argparse.Namespace) -> int:
    from .commands.model import build

    return build(args)


def _model_inspect(args: argparse.Namespace) -> int:
    from .commands.model import inspect

    return inspect(args)


def _device_train(args: argparse.Namespace) -> int:
    from .commands.device import train

    return train(args)


def _device_run(args: argparse.Namespace) -> int:
    from .commands.device_run import run

    return run(args)


def _gateway(action: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        from gateway import cli  # imported only for gateway commands: a device never loads it

        result: int = getattr(cli, action)(args)
        return result

    return handler


def _bridge_run(args: argparse.Namespace) -> int:
    from firmware_bridge.cli import run  # only the bridge host loads serial code

    return run(args)


def _hil_emulate(args: argparse.Namespace) -> int:
    from hil.cli import emulate

    return emulate(args)


def _demo(args: argparse.Namespace) -> int:
    from .commands.demo import demo

    return demo(args)


def _bench(args: argparse.Namespace) -> int:
    from .commands.bench import bench

    return bench(args)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (cosine-decayed)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prox-mu", type=float, default=0.0, help="FedProx proximal term")
    p.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tinyfed", description="Federated learning for IoT devices.")
    sub = top.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build and inspect int8 .tflite models").add_subparsers(
        dest="action", required=True
    )
    b = model.add_parser("build", help="build a fresh int8 model calibrated on data")
    b.add_argument("--arch", choices=("mlp", "cnn1d"), required=True)
    b.add_argument("--data", required=True, help="digits, har, cmapss, ucr:NAME, har-uci:DIR, x.npz, x.csv")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(handler=_model_build)
    i = model.add_parser("inspect", help="print tensors, operators, quantisation and version")
    i.add_argument("model", type=Path)
    i.set_defaults(handler=_model_inspect)

    device = sub.add_parser("device", help="the device side").add_subparsers(dest="action", required=True)
    t = device.add_parser("train", help="train a model on local data and report int8 accuracy")
    t.add_argument("--model", type=Path, required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", type=Path, help="write the trained model here")
    t.add_argument("--backend", default="all", help="litert, tflite-runtime, micro, or all installed")
    t.add_argument(
        "--trainable-layers", type=int, default=0, help="train only the last N weighted layers (0: the whole model)"
    )
    t.add_argument(
        "--personal-layers",
        type=int,
        default=0,
        help="keep the last N trainable layers local (excluded from the update)",
    )
    t.add_argument("--group", type=int, help="use only this natural group (HAR subject, engine)")
    t.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        help="with --group: evaluate on this fraction of the group's samples, train on the rest",
    )
    t.add_argument(
        "--holdout-order",
        choices=("random", "time"),
        default="random",
        help="hold out a seeded random share (default), or the most recent samples",
    )
    _add_train_options(t)
    t.set_defaults(handler=_device_train)
    r = device.add_parser("run", help="join a federation: follow the model, train on tasks, send updates")
    r.add_argument("--config", type=Path, required=True, help="device.toml (keys overridable by TINYFED_<TABLE>_<KEY>)")
    r.add_argument("--keep-trying", action="store_true", help="wait for an unreachable broker instead of exiting 3")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(handler=_device_run)

    gw = sub.add_parser("gateway", help="the hub side: rounds, aggregation, model publishing").add_subparsers(
        dest="action", required=True
    )
    g = gw.add_parser("run", help="run the federation described by gateway.toml")
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("-v", "--verbose", action="store_true")
    g.set_defaults(handler=_gateway("run"))
    g = gw.add_parser("status", help="rounds, updates, refusals and devices from the gateway's store")
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("--last", type=int, default=20, help="show this many rounds")
    g.set_defaults(handler=_gateway("status"))
    g = gw.add_parser("rollback", help="make an earlier model version current (gateway stopped)")
    g.add_argument("--config", type=Path, required=True)
    g.add_argument("--to", required=True, help="version hex prefix, as `gateway status` prints it")
    g.set_defaults(handler=_gateway("rollback"))

    br = sub.add_parser("bridge", help="microcontrollers on serial ports as federation devices").add_subparsers(
        dest="action", required=True
    )
    b = br.add_parser("run", help="bridge every board on the given ports to the federation's MQTT broker")
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
    b.set_defaults(handler=_bridge_run)

    hil = sub.add_parser("hil", help="hardware-in-the-loop: the emulated board").add_subparsers(
        dest="action", required=True
    )
    e = hil.add_parser("emulate", help="run an emulated board behind a pty and print its path")
    e.add_argument("--ram", default="256k", help="RAM budget (256k, 1m, bytes)")
    e.add_argument("--flash", default="1m", help="flash size")
    e.add_argument("--flash-file", type=Path, default=Path("tinyfed-board.flash"), help="survives restarts")
    e.add_argument("--baud", type=int, default=115200)
    e.add_argument("--max-frame", type=int, default=4096, help="largest frame payload the firmware buffers")
    e.add_argument("--board-id", default="emu-0001")
    e.add_argument("--data", default="digits", help="the board's local data: digits, har, cmapss, ... or 'none'")
    e.add_argument("--shard", default="0/10", help="i/n: this board's share of the training split")
    e.add_argument("--group", type=int, help="a natural group instead (HAR subject, engine)")
    e.add_argument(
        "--faults", default="", help="ber=1e-4,drop=1e-5,reset-at=BYTE,brown-out=BYTES,slow=2,seed=N (see docs/hil.md)"
    )
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(handler=_hil_emulate)

    d = sub.add_parser("demo", help="a whole federation on this machine: broker, gateway, real-data devices")
    d.add_argument("--data", default=None, help="har (default when ../shared/data has it), digits or cmapss")
    d.add_argument("--rounds", type=int, default=None)
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--density", type=float, default=None, help="share of entries each update sends")
    d.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port, or 'embedded' for amqtt; default: Mosquitto if installed, else amqtt",
    )
    d.set_defaults(handler=_demo)

    be = sub.add_parser("bench", help="run benchmarks from bench/ and write bench/results/NAME.json")
    be.add_argument("names", nargs="*", help="benchmarks to run (default: the whole suite, bench/suite.py)")
    be.add_argument("--full", action="store_true", help="larger runs where a benchmark offers them")
    be.add_argument("--results", metavar="DIR", help="write NAME.json (and plots) here instead of bench/results/")
    be.set_defaults(handler=_bench)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .model.errors import ModelError

    try:
        handler: Handler = args.handler
        return handler(args)
    except (ModelError, ValueError, OSError) as exc:
        print(f"tinyfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
