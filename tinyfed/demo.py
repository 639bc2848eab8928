"""``tinyfed demo``: a whole federation on this machine, with zero setup.

A broker (Mosquitto if installed, provisioned for the run: TLS with client
certificates, ACL, CRL, and every message signed; otherwise the embedded
amqtt, which enforces nothing), the gateway, and one device agent per share of real data: the 21 HAR training
subjects with the 1D-CNN when the shared data folder is present, 30
digits devices with Dirichlet(0.5) label skew and the MLP otherwise. Each
round prints the int8 model's accuracy on held-out test data, the uplink
bytes against what dense float32 updates would have sent, and the time.
The final model is saved (``--out``, by default ``tinyfed-demo-DATA.tflite``
in the working directory) and the last line says where and how to use it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import socket
import time
from pathlib import Path

from edge_runtime.config import ConfigError
from edge_runtime.data.sources import shared_data_dir
from edge_runtime.storage import atomic_write

DEFAULTS = {
    "digits": {"rounds": 30, "epochs": 5, "learning_rate": 0.05, "density": 0.006},
    "har": {"rounds": 15, "epochs": 2, "learning_rate": 0.02, "density": 0.01},
    "cmapss": {"rounds": 15, "epochs": 2, "learning_rate": 0.05, "density": 0.01},
}


def _free_or_any(port: int) -> int:
    """The asked port when it is free on 127.0.0.1, else 0 (any free one): a second demo on this machine still
    starts, and prints where its pages are."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def demo(args: argparse.Namespace) -> int:
    from gateway.observe import Observers

    from .simulation import FederationSpec, RoundRecord, run_federation  # both roles at once: loaded only to run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = args.data
    if data is None:
        folder = shared_data_dir()
        data = "har" if folder is not None and (folder / "har_raw.npz").is_file() else "digits"
    if data not in DEFAULTS:
        raise ConfigError(f"--data {data!r}: the demo federates digits, har or cmapss")
    out = Path(args.out) if args.out else Path(f"tinyfed-demo-{data}.tflite")
    if not out.parent.is_dir() or out.is_dir():
        raise ConfigError(f"--out {out}: {'a directory' if out.is_dir() else f'no directory {out.parent}'}; "
                          "name the .tflite file to write")  # fmt: skip
    settings = dict(DEFAULTS[data])
    for key in ("rounds", "epochs", "density"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    spec = FederationSpec(
        data=data,
        rounds=int(settings["rounds"]),
        epochs=int(settings["epochs"]),
        learning_rate=float(settings["learning_rate"]),
        density=float(settings["density"]),
        metric="f1" if data == "cmapss" else "accuracy",
        strategy={"name": "fedavgm", "momentum": 0.8},
        secure=not getattr(args, "insecure", False),
        interval=float(getattr(args, "interval", 0.0) or 0.0),
        operator={} if getattr(args, "no_dashboard", False) else {
            "dashboard": {"enabled": True, "port": _free_or_any(int(getattr(args, "dashboard_port", 8787)))},
            "metrics": {"enabled": True, "port": _free_or_any(int(getattr(args, "metrics_port", 9464)))},
        },
    )
    who = {"har": "21 HAR training subjects", "digits": "30 digits devices, Dirichlet(0.5) label skew",
           "cmapss": "100 C-MAPSS engines"}[data]  # fmt: skip
    print(
        f"tinyfed demo: {who}, {spec.arch}, {spec.rounds} rounds of {spec.epochs} local epochs, "
        f"{spec.density:.1%} of entries sent per update",
        flush=True,
    )
    metric = "F1" if spec.metric == "f1" else "accuracy"
    header = f"{'round':>5}  {'test ' + metric:>13}  {'federated':>9}  {'uplink':>10}  {'dense f32':>10}"
    print(f"{header}  {'x less':>6}  {'s':>5}")
    started = time.perf_counter()

    def show(r: RoundRecord) -> None:
        fed = f"{r.federated_accuracy:.4f}" if r.federated_accuracy is not None else "-"
        ratio = r.dense_bytes / r.uplink_bytes if r.uplink_bytes else float("nan")
        print(
            f"{r.round:>5}  {r.score:>13.4f}  {fed:>9}  {r.uplink_bytes:>10,}  {r.dense_bytes:>10,}  "
            f"{ratio:>6.0f}  {r.seconds:>5.1f}",
            flush=True,
        )

    def announce(observers: Observers) -> None:
        if observers.dashboard_url:
            print(f"dashboard: {observers.dashboard_url}   metrics: {observers.metrics_url}", flush=True)

    result = run_federation(spec, broker_url=args.broker, on_round=show, on_start=announce)
    best = max(result.rounds, key=lambda r: r.score)
    final = result.final_evaluation.get("eval_accuracy")
    print(
        f"done in {time.perf_counter() - started:.0f} s over {result.broker}: best test {metric} {best.score:.4f} "
        f"(round {best.round}); final model scored {final:.4f} on the devices' own held-out data"
        if final is not None
        else f"done in {time.perf_counter() - started:.0f} s over {result.broker}",
        flush=True,
    )
    atomic_write(out, result.final_model)
    print(
        f"final model saved to {out.resolve()} (version {hashlib.sha256(result.final_model).hexdigest()[:12]}); "
        f"try: tinyfed model predict --model {out} --data {data}",
        flush=True,
    )
    return 0
