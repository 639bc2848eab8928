"""A whole federation on one machine: a broker, the gateway, and one real device agent per data share.

Used by ``tinyfed demo`` and the ``fl_*`` benchmarks. Every device is a full
``DeviceAgent`` with its own MQTT connection, storage, outbox and
error-feedback residual; only the process is shared. The harness (not the
gateway, which never runs an interpreter) scores each published model on
the data set's held-out test split, so the printed accuracy is the int8
model's on data no device trained on.

Secured as a real federation is, when Mosquitto is installed: a throwaway
federation is provisioned (``tinyfed provision``: a CA, the gateway's and
one bundle per device), Mosquitto runs its TLS listener with client
certificates, the ACL and the CRL, and every manifest, task, receipt,
update and presence is signed (``[trust] mode = "signed"``). The embedded
broker (amqtt), a broker given by URL, and ``FederationSpec.secure = False``
run insecure, with the warning that says so.
"""

from __future__ import annotations

import logging
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data import partition
from edge_runtime.data.dataset import Dataset, DataSplit
from edge_runtime.data.sources import load_source
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.backends import default_backend
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.info import quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.evaluate import int8_predictions
from edge_runtime.transport.broker import MosquittoProcess, find_mosquitto, free_port
from edge_runtime.transport.embedded import demo_broker
from gateway.config import GatewayConfig, GatewaySection, RoundsSection
from gateway.observe import Observers
from gateway.service import Gateway, RoundSummary

from .wiremeter import Counts, WireMeter

log = logging.getLogger(__name__)


@dataclass
class FederationSpec:
    data: str = "digits"  # digits | har | cmapss
    devices: int = 30  # digits only: HAR and C-MAPSS use their natural groups (subjects, engines)
    alpha: float = 0.5  # digits: Dirichlet label skew
    rounds: int = 20
    epochs: int = 5
    learning_rate: float = 0.05
    batch_size: int = 32
    density: float = 0.01
    value_coding: int = 2
    strategy: dict[str, object] = field(default_factory=lambda: {"name": "fedavg"})
    trainable_layers: int = 0
    holdout: float = 0.2
    report_every: int = 5
    range_settle: float = RoundsSection.range_settle  # reports off the schedule while ranges move (the default)
    seed: int = 0
    metric: str = "accuracy"  # or "f1" (positive class 1)
    secure: bool = True  # TLS with ACLs and signatures, when Mosquitto runs here (module docstring)
    interval: float = 0.0  # [rounds] interval: seconds from one round's opening to the next (0 = at once)
    # The gateway's operator tables as given: [metrics], [dashboard], [retention] (docs/operations.md).
    operator: dict[str, dict[str, object]] = field(default_factory=dict)
    # The downlink ([gateway] patches, downlink_density, downlink_saturate; gateway/downlink.py) and whether the
    # devices' bytes are counted on the wire (tinyfed/wiremeter.py: a TCP proxy between the devices and the broker).
    patches: bool = True
    downlink_density: float = 0.0
    downlink_saturate: float = GatewaySection.downlink_saturate  # the gateway's default
    meter: bool = False

    @property
    def arch(self) -> str:
        return "cnn1d" if self.data == "har" else "mlp"


@dataclass
class RoundRecord:
    round: int
    score: float  # the int8 model's accuracy (or F1) on the test split
    federated_accuracy: float | None  # sample-weighted over devices' held-out shares, when reported
    uplink_bytes: int  # cumulative
    dense_bytes: int  # cumulative: what dense float32 updates would have sent
    seconds: float
    wire: Counts | None = None  # cumulative: the devices' bytes on the wire both ways, when metered


@dataclass
class FederationResult:
    spec: FederationSpec
    rounds: list[RoundRecord]
    devices: int
    broker: str
    final_evaluation: dict[str, float]
    final_model: bytes = b""  # the last version the gateway published
    storage_bytes: int = 0  # the gateway's storage folder (store, WAL, model files) when the federation ended
    storage_files: dict[str, int] = field(default_factory=dict)  # its bytes by top-level entry (gateway.db, models)
    model_bytes: int = 0  # the int8 model's size


def device_shares(spec: FederationSpec, split: DataSplit) -> list[tuple[str, LocalData]]:
    train = split.train
    if spec.data in ("har", "cmapss"):
        shares = partition.natural(train)
        prefix = "subject" if spec.data == "har" else "engine"
    else:
        shares = partition.dirichlet(train, spec.devices, spec.alpha, seed=spec.seed)
        prefix = "device"
    out = []
    rng = np.random.default_rng(spec.seed)
    for key, index in sorted(shares.items()):
        index = rng.permutation(index)
        n_eval = max(1, round(len(index) * spec.holdout))
        name = f"{prefix}-{key}"
        out.append(
            (name, LocalData(train.subset(index[n_eval:], name), train.subset(index[:n_eval], f"{name} held out")))
        )
    return out


def score(backend: Backend, model: bytes, test: Dataset, metric: str) -> float:
    graph = read_graph(model)
    predicted = int8_predictions(backend, model, quantize_input(graph, test.x)).argmax(axis=1)
    if metric == "f1":
        tp = int(((predicted == 1) & (test.y == 1)).sum())
        fp = int(((predicted == 1) & (test.y == 0)).sum())
        fn = int(((predicted == 0) & (test.y == 1)).sum())
        return 2 * tp / max(1, 2 * tp + fp + fn)
    return float((predicted == test.y).mean())


@dataclass
class Federation:
    """Where the gateway and the devices connect, and their [broker] and [trust] tables."""

    url: str
    kind: str  # "mosquitto (TLS, ACL, signed)", "mosquitto", "amqtt" or "configured"
    broker: dict[str, object]  # the [broker] table every party shares (secured: the gateway's own)
    trust: dict[str, object]  # the gateway's [trust]
    bundles: Path | None = None  # secured: DIR/<device>/ holds each device's bundle and device.toml

    def device_tables(self, device: str) -> dict[str, object]:
        """A device's [broker] and [trust]: its bundle's own, secured; everyone's, otherwise."""
        if self.bundles is None:
            return {"broker": self.broker, "trust": {"mode": "insecure"}}
        written = tomllib.loads((self.bundles / device / "device.toml").read_text())
        return {"broker": {**written["broker"], **FAST}, "trust": written["trust"]}


FAST = {"backoff_base": 0.05, "backoff_cap": 1.0}


class _Once(logging.Filter):
    """Lets the first record of each message pattern through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.msg not in self.seen
        self.seen.add(str(record.msg))
        return first


@contextmanager
def _broker(url: str | None, workdir: Path, federation: str, devices: list[str], secure: bool) -> Iterator[Federation]:
    insecure: dict[str, object] = {"mode": "insecure"}
    if url and url != "embedded":
        yield Federation(url, "configured", {"url": url, "protocol": "auto", **FAST}, insecure)
        return
    if secure and url is None and find_mosquitto() is not None:
        with _secured(workdir, federation, devices) as secured:
            yield secured
        return
    with demo_broker(workdir, prefer="amqtt" if url == "embedded" else "auto") as (found, kind):
        protocol = "3.1.1" if kind == "amqtt" else "auto"
        yield Federation(found, kind, {"url": found, "protocol": protocol, **FAST}, insecure)


@contextmanager
def _secured(workdir: Path, federation: str, devices: list[str]) -> Iterator[Federation]:
    """A throwaway provisioned federation on a Mosquitto of its own: TLS, client certificates, ACL, CRL."""
    from gateway.pki import provision
    from gateway.pki.layout import Layout

    root = workdir / "pki"
    provision.init(root, federation, ["127.0.0.1"], port=free_port())
    provision.add_devices(root, devices, install_dir=str(root / "devices" / "{id}"),
                          storage=str(workdir / "devices" / "{id}"))  # fmt: skip
    layout = Layout(root)
    listener = provision.tls_listener(layout)
    with MosquittoProcess(port=layout.read_meta().port, workdir=workdir / "mosquitto", tls=listener) as mosquitto:
        written = tomllib.loads(layout.gateway_broker_toml.read_text())
        yield Federation(mosquitto.url, "mosquitto (TLS, ACL, signed)", {**written["broker"], **FAST},
                         written["trust"], layout.devices_dir)  # fmt: skip


@contextmanager
def _meter(spec: FederationSpec, place: Federation) -> Iterator[WireMeter | None]:
    """A wire meter in front of the broker for the devices' connections, when the spec asks for one."""
    if not spec.meter:
        yield None
        return
    parsed = urlsplit(place.url)
    with WireMeter(parsed.hostname or "127.0.0.1", parsed.port or 1883, mqtt=parsed.scheme == "mqtt") as meter:
        yield meter


def _metered(tables: dict[str, object], meter: WireMeter | None) -> dict[str, object]:
    if meter is None:
        return tables
    broker = dict(tables["broker"])  # type: ignore[call-overload]
    broker["url"] = meter.url(urlsplit(str(broker["url"])).scheme)
    return {**tables, "broker": broker}


def run_federation(
    spec: FederationSpec,
    broker_url: str | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    workdir: Path | None = None,
    timeout: float = 3600.0,
    on_start: Callable[[Observers], None] | None = None,
) -> FederationResult:
    backend = default_backend()
    split = load_source(spec.data, seed=spec.seed)
    shares = device_shares(spec, split)
    graph = build_model(spec.arch, split.train.x, split.train.classes, seed=spec.seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp_text:
        tmp = Path(tmp_text)
        initial = tmp / "initial.tflite"
        initial.write_bytes(write_graph(graph))
        model_size = initial.stat().st_size
        federation = f"demo-{spec.data}"
        names = [name for name, _ in shares]
        with _broker(broker_url, tmp, federation, names, spec.secure) as place, _meter(spec, place) as meter:
            kind = place.kind
            if kind == "amqtt":
                # amqtt 0.12 drops some clients right after it delivers their retained model chunks; the links
                # reconnect and resume their sessions (nothing is lost), but each drop would log a warning.
                logging.getLogger("edge_runtime.transport.mqtt").setLevel(logging.ERROR)
            quiet = _Once()  # the insecure warning is said by the gateway, not again by each of 30 devices
            logging.getLogger("edge_runtime.trust").addFilter(quiet)
            config = GatewayConfig.from_mapping(
                {
                    "gateway": {
                        "federation": federation,
                        "storage": str(tmp / "gateway"),
                        "model": str(initial),
                        "trainable_layers": spec.trainable_layers,
                        "patches": spec.patches,
                        "downlink_density": spec.downlink_density,
                        "downlink_saturate": spec.downlink_saturate,
                    },
                    "rounds": {
                        "rounds": spec.rounds,
                        "min_devices": len(shares),
                        "deadline": 600.0,
                        "epochs": spec.epochs,
                        "learning_rate": spec.learning_rate,
                        "batch_size": spec.batch_size,
                        "density": spec.density,
                        "value_coding": spec.value_coding,
                        "report_every": spec.report_every,
                        "range_settle": spec.range_settle,
                        "seed": spec.seed,
                        "interval": spec.interval,
                    },
                    **spec.operator,
                    "strategy": dict(spec.strategy),
                    "broker": place.broker,
                    "trust": place.trust,
                },
                f"the demo's gateway ({kind})",
                env={},
            )
            gateway = Gateway(config)
            records: list[RoundRecord] = []
            totals = [0, 0]

            def on_closed(summary: RoundSummary) -> None:
                totals[0] += summary.uplink_bytes
                totals[1] += summary.dense_bytes
                record = RoundRecord(
                    summary.round,
                    score(backend, gateway.model, split.test, spec.metric),
                    summary.metrics.get("eval_accuracy"),
                    totals[0],
                    totals[1],
                    summary.seconds,
                    meter.snapshot() if meter is not None else None,
                )
                records.append(record)
                if on_round is not None:
                    on_round(record)

            gateway.on_round_closed.append(on_closed)
            gateway.start()
            observers = Observers(gateway)
            agents = []
            try:
                observers.start()
                if on_start is not None:
                    on_start(observers)
                for name, data in shares:
                    device_config = DeviceConfig.from_mapping(
                        {
                            "device": {
                                "id": name,
                                "federation": federation,
                                "storage": str(tmp / "devices" / name),
                                "trainable_layers": spec.trainable_layers,
                                "seed": spec.seed,
                            },
                            **_metered(place.device_tables(name), meter),
                        },
                        env={},
                    )
                    agents.append(DeviceAgent(device_config, data, backend).start())
                if not gateway.finished.wait(timeout):
                    raise TimeoutError(f"federation did not finish {spec.rounds} rounds in {timeout:.0f} s")
            finally:
                logging.getLogger("edge_runtime.trust").removeFilter(quiet)
                for agent in agents:
                    agent.stop(timeout=10)
                final = dict(gateway.final_metrics)
                final_model = gateway.model
                observers.stop()
                gateway.stop()
                files: dict[str, int] = {}
                for path in (tmp / "gateway").rglob("*"):
                    if path.is_file():
                        top = path.relative_to(tmp / "gateway").parts[0]
                        files[top] = files.get(top, 0) + path.stat().st_size
    return FederationResult(spec, records, len(shares), kind, final, final_model, sum(files.values()), files,
                            model_size)


def central_baseline(spec: FederationSpec, epochs: int = 30) -> float:
    """The same model trained centrally on all training data, scored the same way (C-MAPSS's reference)."""
    from edge_runtime.train.trainer import TrainConfig, Trainer

    backend = default_backend()
    split = load_source(spec.data, seed=spec.seed)
    graph = build_model(spec.arch, split.train.x, split.train.classes, seed=spec.seed)
    trainer = Trainer(graph, 0, backend, TrainConfig(epochs=epochs, learning_rate=spec.learning_rate, seed=spec.seed))
    trainer.fit(quantize_input(graph, split.train.x), split.train.y)
    return score(backend, write_graph(trainer.export()), split.test, spec.metric)
