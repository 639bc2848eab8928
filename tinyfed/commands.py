"""``tinyfed demo`` and ``tinyfed bench``: the commands that compose several roles, registered as entry points."""

from __future__ import annotations

import argparse

from edge_runtime.command import Command


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(args)


def _bench(args: argparse.Namespace) -> int:
    from .bench import bench

    return bench(args)


def _configure_demo(d: argparse.ArgumentParser) -> None:
    d.add_argument("--data", default=None, help="har (default when ../shared/data has it), digits or cmapss")
    d.add_argument("--rounds", type=int, default=None, help="rounds to run (default: 30 for digits, 15 otherwise)")
    d.add_argument("--epochs", type=int, default=None, help="local epochs per round (default: 5 for digits, else 2)")
    d.add_argument(
        "--density",
        type=float,
        default=None,
        help="share of entries each update sends (default: 0.006 for digits, else 0.01)",
    )
    d.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port, or 'embedded' for amqtt; default: Mosquitto if installed (provisioned: TLS, "
        "client certificates, ACL, signatures), else amqtt (enforces nothing)",
    )
    d.add_argument(
        "--insecure",
        action="store_true",
        help="on Mosquitto too: no TLS, no ACL, no signatures (to compare; a given --broker or amqtt is always so)",
    )
    d.add_argument("--interval", type=float, default=0.0,
                   help="seconds from one round's opening to the next ([rounds] interval; default 0: at once)")
    d.add_argument("--dashboard-port", type=int, default=8787,
                   help="the dashboard's port on 127.0.0.1 (default 8787; 0 picks a free one)")
    d.add_argument("--metrics-port", type=int, default=9464,
                   help="the Prometheus endpoint's port on 127.0.0.1 (default 9464; 0 picks a free one)")
    d.add_argument("--no-dashboard", action="store_true", help="serve neither the dashboard nor the metrics")
    d.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="where to save the final model (default: tinyfed-demo-DATA.tflite in the working directory)",
    )
    d.set_defaults(handler=_demo)


def _configure_bench(be: argparse.ArgumentParser) -> None:
    be.add_argument("names", nargs="*", help="benchmarks to run (default: the whole suite, bench/suite.py)")
    be.add_argument("--full", action="store_true", help="larger runs where a benchmark offers them")
    be.add_argument("--results", metavar="DIR", help="write NAME.json (and plots) here instead of bench/results/")
    be.set_defaults(handler=_bench)


DEMO = Command(
    "demo", "a whole federation on this machine: broker, gateway, real-data devices", _configure_demo, ("demo",)
)
# The benchmarks run devices and a gateway (and score on digits); psutil and matplotlib are optional extras to them.
BENCH = Command(
    "bench",
    "run benchmarks from bench/ and write bench/results/NAME.json",
    _configure_bench,
    ("device", "gateway", "data"),
)
