"""``gateway.toml``, read like the device's file: tables of typed keys, ``TINYFED_<TABLE>_<KEY>`` overrides.

```toml
[gateway]
federation = "home"
storage = "/var/lib/tinyfed-gateway"   # SQLite state, model versions, master weights
model = "/etc/tinyfed/initial.tflite"  # the first model, used when the store has none
trainable_layers = 0                   # layers devices train and send (0 = all)
min_free_mb = 64                       # no new round opens while storage has less free space than this
commit_batch = 256                     # updates committed with one fsync at most (group commit; 1 = one each)
commit_delay = 0.005                   # seconds an update waits at most for others to share its commit (and the
                                       # quiet after which one is committed at once: batches form under load only)

[rounds]
mode = "sync"              # sync | async (buffered, FedBuff-style)
rounds = 0                 # stop after this many rounds (0 = run until stopped)
fraction = 1.0             # share of eligible devices asked per round
min_devices = 2            # never start a round with fewer eligible devices
overprovision = 0.0        # ask this many more (0.3 = 30%) and close when the target has answered
min_updates = 1            # a round closes at its deadline only with at least this many updates
deadline = 120.0           # seconds
epochs = 1
learning_rate = 0.05
batch_size = 32
density = 0.01             # share of entries a device sends
value_coding = 2           # 0 float32, 1 float16, 2 int8, 3 ternary
norm_bound = 1000.0        # refuse an update whose L2 norm exceeds this
clip_norm = 0.0            # scale larger updates down to this norm (0 = off)
max_samples = 100000       # an update weighs at most this many samples, and at most what its device declared
max_range_growth = 2.0     # reported ranges move the model's by at most this factor per version since the last report
min_samples = 1
min_ram = 0                # bytes of RAM a device must announce
concurrency = 10           # async: devices kept busy at once
buffer_size = 5            # async: updates per aggregation step
max_staleness = 5          # async: versions an update may lag behind
report_every = 5           # every Nth round devices also report evaluation and activation ranges
range_settle = 1.25        # the next round asks for reports too when the last moved some layer's activation
                           # range, or the weights grew since, more than this factor (0 = report_every only)
seed = 0
interval = 0.0             # sync: seconds from one round's opening to the next (0 = at once; 10 = one every 10 s)

[strategy]
name = "fedavg"            # fedavg fedavgm fedadam fedyogi fedadagrad fedprox fedmedian fedtrimmedavg krum multikrum
server_lr = 1.0
# any other key is passed to the strategy: momentum, beta1, beta2, tau, mu, beta, byzantine, keep

[privacy]                  # docs/privacy.md; needs the privacy extra (dp-accounting) unless mode = "off"
mode = "off"               # off | central-dp (noise on the aggregate, a trusted gateway) | local-dp (noise on devices)
                           # | distributed-dp (this budget over [secagg] noise_multiplier, docs/secagg.md)
epsilon = 8.0              # the budget: no round opens that would take the accountant past (epsilon, delta)
delta = 1e-5               # keep it below 1 / the number of devices
noise_multiplier = 1.0     # Gaussian noise stddev as a multiple of the clip
clip = 0.1                 # L2 bound on each device's update (the first one when adaptive)
sampling_rate = 0.05       # central-dp: each eligible device is asked with this probability, independently
accountant = "rdp"         # rdp | pld (dp-accounting's)
adaptive_clip = false      # central-dp: move the clip towards a quantile of the updates' norms (Andrew et al. 2021)
target_quantile = 0.5      # adaptive: the share of updates that should fall within the clip
clip_learning_rate = 0.2   # adaptive: the geometric step of the clip per round
clip_count_stddev = 0.0    # adaptive: noise on the count of updates within the clip (0: expected devices / 20)

[robustness]               # docs/robustness.md: anomalous and Byzantine contributions
detect = false             # score every training update at each close (norm, cosine with the round's median)
exclude_flagged = true     # a flagged update is recorded and not counted in its round
reliability_weights = false  # weigh updates by their device's reliability (needs detect)
threshold = 3.0            # robust z-score of an update's norm past which it is flagged (with norm_ratio)
norm_ratio = 2.0           # ... and only if its norm is also more than this times the round's median
min_cosine = 0.0           # an update whose cosine with the round's median is below this is flagged
decay = 0.7                # reliability <- decay x reliability + (1 - decay) x (0 if flagged else 1)
quarantine_below = 0.4     # quarantine a device whose reliability falls below this (0 = never)
min_updates = 5            # rounds with fewer updates are not scored
validation = ""            # optional .npz (arrays x, y) on the hub: flag updates that raise its loss
loss_step = 0.1            # with validation: the loss change of base + this x the update (where it points)
dormant_share = 0.05       # with validation: flag updates with more of their mass on weights its data never drives
clip_to_median = 0.0       # > 0: counted updates above this x the round's median norm are scaled down to it
history = true             # flag devices whose updates across rounds point away from the federation's
history_decay = 0.8        # a device's history: decay x history + its update's unit direction, each round
history_min_cosine = 0.0   # flagged below this cosine with the federation's history (and threshold robust sd)
min_history = 3            # rounds of history before a device's is judged
history_dim = 4096         # floats kept per device (a count sketch; exact for smaller models)

[broker]
url = "mqtt://127.0.0.1:1883"

[metrics]                  # Prometheus text endpoint at http://HOST:PORT/metrics (docs/operations.md)
enabled = false
host = "127.0.0.1"
port = 9464

[dashboard]                # read-only web page (docs/operations.md)
enabled = false
host = "127.0.0.1"         # beyond loopback: a token, or HTTPS with client certificates (cert_file, key_file, ca_file)
port = 8787
token = ""

[retention]                # 0 keeps everything
models = 0                 # model versions kept (never the current one nor a rollback target)
updates = 0                # rounds whose update payloads are kept
vacuum_mb = 0.0            # VACUUM the store once this many MB of payloads were emptied (0 = never)
refusals = 100000          # refused messages kept, the latest (0 = all): a flood of them must not fill the disk

[trust]                    # written by `tinyfed provision init` into gateway/broker.toml (docs/security.md)
mode = "signed"            # the default; "insecure" (no keys, nothing signed or checked) must be asked for
signing_key = "/var/lib/tinyfed/pki/gateway/signing.key"   # signs every manifest, task, receipt and state
devices = "/var/lib/tinyfed/pki/gateway/devices.json"      # the device keys, re-read whenever the file changes
probe_cert_file = "/var/lib/tinyfed/pki/gateway/probe.crt" # reads a running gateway's presence at start
probe_key_file = "/var/lib/tinyfed/pki/gateway/probe.key"
```

Without ``[trust]`` the mode is ``signed`` and its keys are missing, so ``gateway run`` refuses to start
(``gateway.trust.gateway_trust``); ``status``, ``rollback`` and ``export`` read no keys and run either way.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.config import (
    ConfigError,
    broker_section,
    check_environment,
    check_tables,
    closest,
    did_you_mean,
    env_name,
    keys_of,
    read_toml,
    section,
    setting,
    table,
)
from edge_runtime.model.files import read_model
from edge_runtime.paths import check_storage_dir
from edge_runtime.transport.mqtt import BrokerConfig
from edge_runtime.transport.topics import DEFAULT_FEDERATION, check_id
from edge_runtime.wire.errors import SchemaError

from .robustness.settings import RobustnessSection
from .strategies import STRATEGIES, Strategy, make_strategy
from .trust import TrustSection


@dataclass
class GatewaySection:
    federation: str = DEFAULT_FEDERATION
    storage: str = "tinyfed-gateway"
    model: str = ""
    trainable_layers: int = 0
    chunk_size: int = 64 * 1024
    connect_timeout: float = 15.0
    min_free_mb: float = 64.0  # below this much free space under storage, no new round opens
    commit_batch: int = 256  # group commit: updates committed (and receipted) together with one fsync, at most
    commit_delay: float = 0.005  # seconds a staged update waits at most for others to share its commit
    # Downlink (gateway/downlink.py): a version goes to devices holding its parent as a patch in the manifest;
    # ``downlink_density`` > 0 bounds the fraction of each weight tensor's int8 codes a version moves;
    # ``downlink_saturate`` is how far weights may outgrow a held scale before it moves (DownlinkPolicy.saturate).
    patches: bool = True
    downlink_density: float = 0.0
    downlink_saturate: float = 0.0

    def __post_init__(self) -> None:
        if self.commit_batch < 1 or not 0 <= self.commit_delay <= 60:
            raise ValueError(f"commit_batch {self.commit_batch} must be >= 1 and commit_delay "
                             f"{self.commit_delay:g} within [0, 60] seconds")  # fmt: skip
        if not 0 <= self.downlink_density <= 1:
            raise ValueError(f"downlink_density {self.downlink_density} is not in [0, 1]")
        if not 0 <= self.downlink_saturate <= 1:
            raise ValueError(f"downlink_saturate {self.downlink_saturate} is not in [0, 1]")


@dataclass
class RoundsSection:
    mode: str = "sync"
    rounds: int = 0
    fraction: float = 1.0
    min_devices: int = 2
    overprovision: float = 0.0
    min_updates: int = 1
    deadline: float = 120.0
    epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 32
    density: float = 0.01
    value_coding: int = 2
    norm_bound: float = 1000.0
    clip_norm: float = 0.0
    max_samples: int = 100_000  # an update weighs at most this many samples (and at most its birth declared)
    max_range_growth: float = 2.0  # per version since ranges were last taken, at most report_every (publisher.py)
    min_samples: int = 1
    min_ram: int = 0  # bytes a device must announce to be given work
    concurrency: int = 10
    buffer_size: int = 5
    max_staleness: int = 5
    report_every: int = 5  # rounds between federated evaluations (and activation-range reports)
    range_settle: float = 1.25  # ranges or weights that moved more than this factor: the next round asks (0: off)
    seed: int = 0
    interval: float = 0.0  # sync: seconds from one round's opening to the next one's (0 = at once)

    def __post_init__(self) -> None:
        if self.mode not in ("sync", "async"):
            raise ValueError(f"mode {self.mode!r} is not sync or async")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction {self.fraction} is not in (0, 1]")
        if not 0 < self.density <= 1:
            raise ValueError(f"density {self.density} is not in (0, 1]")
        if min(self.min_devices, self.min_updates, self.buffer_size, self.concurrency, self.report_every) < 1:
            raise ValueError("min_devices, min_updates, buffer_size, concurrency and report_every must be >= 1")
        if self.overprovision < 0 or self.deadline <= 0:
            raise ValueError("overprovision must be >= 0 and deadline > 0")
        if self.max_samples < 1 or not (math.isfinite(self.max_range_growth) and self.max_range_growth > 1):
            raise ValueError("max_samples must be >= 1 and max_range_growth > 1")
        if not (self.range_settle == 0 or (math.isfinite(self.range_settle) and self.range_settle > 1)):
            raise ValueError(f"range_settle {self.range_settle} must be 0 (off) or a factor above 1")
        if self.value_coding not in (0, 1, 2, 3):
            raise ValueError(f"value_coding {self.value_coding} is not 0, 1, 2 or 3")
        if self.interval < 0 or (self.interval and self.mode != "sync"):
            raise ValueError(f"interval {self.interval:g} must be >= 0, and is for sync rounds only (async rounds "
                             "open as buffers fill)")  # fmt: skip


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class MetricsSection:
    """The Prometheus endpoint (gateway/metrics.py): off unless asked for; loopback unless told otherwise."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")


@dataclass
class DashboardSection:
    """The read-only web page (gateway/dashboard/). Beyond loopback it needs a token, or TLS with a client CA."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8787
    token: str = ""  # asked as ?token=... or an Authorization: Bearer header
    cert_file: str = ""  # HTTPS: the server's certificate and key (the federation's PKI may issue them)
    key_file: str = ""
    ca_file: str = ""  # HTTPS: browsers must present a certificate signed by this CA

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.ca_file and not self.cert_file:
            raise ValueError("ca_file needs cert_file and key_file (HTTPS)")
        if self.host not in LOCAL_HOSTS and not self.token and not self.ca_file:
            raise ValueError(f"host {self.host!r} is beyond this machine: set a token, or cert_file, key_file and "
                             "ca_file (HTTPS with client certificates)")  # fmt: skip

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS


@dataclass
class RetentionSection:
    """What the store keeps (gateway/retention.py): 0 keeps everything, as before this table existed, except
    refused messages, which hostile senders make: the latest ``refusals`` are kept unless it is set to 0."""

    models: int = 0  # model versions kept (files and rows); the current one and a rollback target always are
    updates: int = 0  # rounds whose updates' payloads are kept (their counts and bytes are always kept)
    vacuum_mb: float = 0.0  # rewrite the store (VACUUM) once this many MB of payloads were emptied (0 = never)
    refusals: int = 100_000  # refused messages kept, the latest (0 = all); about 150 bytes of store each

    def __post_init__(self) -> None:
        if self.models < 0 or self.updates < 0 or self.vacuum_mb < 0 or self.refusals < 0:
            raise ValueError(f"models, updates, vacuum_mb and refusals must be >= 0 (0 keeps all), got {self.models}, "
                             f"{self.updates}, {self.vacuum_mb:g} and {self.refusals}")  # fmt: skip


PRIVACY_MODES = ("off", "central-dp", "local-dp", "distributed-dp")


@dataclass
class PrivacySection:
    mode: str = "off"
    epsilon: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float = 1.0
    clip: float = 0.1
    sampling_rate: float = 0.05
    accountant: str = "rdp"
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_stddev: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(PRIVACY_MODES)}")
        if self.accountant not in ("rdp", "pld"):
            raise ValueError(f"accountant {self.accountant!r} is not rdp or pld")
        if self.epsilon <= 0 or not 0 < self.delta < 1:
            raise ValueError(f"epsilon must be > 0 and delta in (0, 1), got {self.epsilon} and {self.delta}")
        if self.noise_multiplier <= 0 or self.clip <= 0:
            raise ValueError(f"noise_multiplier and clip must be > 0, got {self.noise_multiplier} and {self.clip}")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling_rate {self.sampling_rate} is not in (0, 1]")
        if not 0 < self.target_quantile < 1 or self.clip_learning_rate <= 0 or self.clip_count_stddev < 0:
            raise ValueError("target_quantile must be in (0, 1), clip_learning_rate > 0 and clip_count_stddev >= 0")

    @property
    def on(self) -> bool:
        return self.mode != "off"


@dataclass
class SecAggSection:
    """``[secagg]``: secure aggregation (SecAgg+ over announced coordinates, docs/secagg.md)."""

    mode: str = "off"  # off | secagg
    coordinates: float = 0.0  # fraction of the trainable entries each round sends (0: [rounds] density)
    random_share: float = 0.5  # of those, the share drawn at random (the rest: the last aggregate's largest)
    degree: int = 0  # neighbours per device in the SecAgg+ graph (0: 4 log2 of the devices, at most all)
    threshold: float = 0.5  # shares needed, as a fraction of each secret's holders (at least half plus one)
    input_bits: int = 8  # a clipped value quantises to at most 2^(input_bits - 1) - 1 steps
    clip: float = 1.0  # L2 bound of each device's input
    noise_multiplier: float = 0.0  # distributed DP: the sum's Skellam noise over the sensitivity (0: none)
    step_deadline: float = 20.0  # seconds for each exchange of keys, shares and unmasking
    value_bound: float = 0.0  # > 0: each value bounded by value_bound x clip / sqrt(coordinates) (0: by the clip)

    def __post_init__(self) -> None:
        if self.value_bound < 0:
            raise ValueError(f"value_bound {self.value_bound:g} is negative (0: each value bounded by the clip)")
        if self.mode not in ("off", "secagg"):
            raise ValueError(f"mode {self.mode!r} is not off or secagg")
        if not 0 <= self.coordinates <= 1 or not 0 <= self.random_share <= 1 or not 0 < self.threshold <= 1:
            raise ValueError("coordinates and random_share must be in [0, 1] and threshold in (0, 1]")
        if not 2 <= self.input_bits <= 24 or self.degree < 0:
            raise ValueError(f"input_bits {self.input_bits} is not in [2, 24], or degree {self.degree} is negative")
        if self.clip <= 0 or self.noise_multiplier < 0 or self.step_deadline <= 0:
            raise ValueError("clip and step_deadline must be > 0 and noise_multiplier >= 0")

    @property
    def on(self) -> bool:
        return self.mode != "off"


@dataclass
class GatewayConfig:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    broker: BrokerConfig = field(default_factory=lambda: BrokerConfig(protocol="auto"))
    trust: TrustSection = field(default_factory=TrustSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    robustness: RobustnessSection = field(default_factory=RobustnessSection)
    source: str = "defaults"

    @property
    def storage(self) -> Path:
        return Path(self.gateway.storage)

    @property
    def strategy_name(self) -> str:
        return str(self.strategy.get("name", "fedavg"))

    @property
    def strategy_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.strategy.items() if k != "name"}

    @staticmethod
    def tables(strategy: str = "fedavg") -> dict[str, list[str]]:
        """Each table's keys (``[strategy]``'s are those of the named strategy): what the environment may set."""
        return {
            "gateway": keys_of(GatewaySection),
            "rounds": keys_of(RoundsSection),
            "strategy": keys_of(strategy_options(STRATEGIES[strategy])),
            "privacy": keys_of(PrivacySection),
            "secagg": keys_of(SecAggSection),
            "broker": keys_of(BrokerConfig),
            "trust": keys_of(TrustSection),
            "metrics": keys_of(MetricsSection),
            "dashboard": keys_of(DashboardSection),
            "retention": keys_of(RetentionSection),
            "robustness": keys_of(RobustnessSection),
        }

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, object], source: str = "<config>", env: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        check_tables(data, ("gateway", "rounds", "strategy", "privacy", "secagg", "broker", "trust", "metrics",
                            "dashboard", "retention", "robustness"), source)  # fmt: skip
        strategy = strategy_section(table(data, "strategy"), source, env)
        check_environment("gateway", cls.tables(strategy["name"]), env)
        config = cls(
            gateway=section(GatewaySection, table(data, "gateway"), "gateway", source, env),
            rounds=section(RoundsSection, table(data, "rounds"), "rounds", source, env),
            strategy=strategy,
            privacy=section(PrivacySection, table(data, "privacy"), "privacy", source, env),
            secagg=section(SecAggSection, table(data, "secagg"), "secagg", source, env),
            broker=broker_section(data, source, env),
            trust=section(TrustSection, table(data, "trust"), "trust", source, env),
            metrics=section(MetricsSection, table(data, "metrics"), "metrics", source, env),
            dashboard=section(DashboardSection, table(data, "dashboard"), "dashboard", source, env),
            retention=section(RetentionSection, table(data, "retention"), "retention", source, env),
            robustness=section(RobustnessSection, table(data, "robustness"), "robustness", source, env),
            source=source,
        )
        try:
            check_id("federation", config.gateway.federation)
        except SchemaError as exc:
            raise ConfigError(f"{source} [gateway]: {exc}") from exc
        try:
            strategy_object = config.make_strategy()
        except ValueError as exc:
            raise ConfigError(f"{source} [strategy]: {exc}") from exc
        check_privacy(config, bool(getattr(strategy_object, "buffered", False)), env)
        check_secagg(config, bool(getattr(strategy_object, "buffered", False)), env)
        return config

    def check_files(self) -> None:
        """Before the service starts: storage is a writable folder and, with no state in it yet, the initial
        model is an int8 .tflite file. Each failure names the key (or the variable that set it) and the path."""
        check_storage_dir(self.storage, setting(self.source, "gateway", "storage"))
        check_metrics_extra(self)
        if (self.storage / "gateway.db").exists():
            return  # the store's current version is the model; [gateway] model is read only for a fresh store
        where = setting(self.source, "gateway", "model")
        if not self.gateway.model:
            raise ConfigError(f"{where}: no initial model given, and {self.storage} holds no gateway state to resume")
        read_model(Path(self.gateway.model), where)

    def require_state(self) -> None:
        """For the commands that read a store (status, rollback): one must be there."""
        db = self.storage / "gateway.db"
        if not db.exists():
            where = setting(self.source, "gateway", "storage")
            raise ConfigError(f"{where} {self.storage}: no gateway state here ({db.name} is missing); has the gateway "
                              "run with this storage?")  # fmt: skip

    def make_strategy(self) -> Any:
        return make_strategy(self.strategy_name, **self.strategy_params)

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
        return cls.from_mapping(read_toml(path), str(path), env)


def check_metrics_extra(config: GatewayConfig) -> None:
    """[metrics] needs prometheus-client, the `metrics` extra: said at start, naming the key and the install."""
    if not config.metrics.enabled:
        return
    try:
        import prometheus_client  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{setting(config.source, 'metrics', 'enabled')} = true needs prometheus-client (the "
                          "'metrics' extra): pip install 'tinyfed[metrics]'") from exc  # fmt: skip


def check_privacy(config: GatewayConfig, buffered: bool, env: Mapping[str, str] | None = None) -> None:
    """Refuse every setting the privacy accountant cannot account for, naming the keys (docs/privacy.md).

    central-dp: the accountant assumes each eligible device is asked with probability ``sampling_rate``,
    independently, and that one device moves the noised sum by at most the clip. Over-provisioning (closing
    when a target has answered lets one device's answer push out another's), a ``fraction`` (a sample of fixed
    size), asynchronous buffers (devices kept busy as they free up), ``min_updates`` (a round that fails on a
    count releases the count) and a buffered strategy (it reads single updates, not the noised sum) each break
    that. local-dp needs none of it (every update is private on its own), but has no adaptive clipping (the
    bit would travel in the clear to a gateway nobody trusts).
    """
    privacy, rounds, source = config.privacy, config.rounds, config.source
    if not privacy.on:
        return

    def where(table_name: str, key: str) -> str:
        return setting(source, table_name, key, env)

    mode = f"{where('privacy', 'mode')} = {privacy.mode!r}"
    if privacy.mode == "distributed-dp":
        # The budget of secure aggregation's distributed DP: the noise is [secagg]'s, the budget [privacy]'s.
        if not config.secagg.on or config.secagg.noise_multiplier <= 0:
            raise ConfigError(f"{mode} is the budget of secure aggregation's distributed DP: it needs "
                              f"{where('secagg', 'mode')} = 'secagg' and {where('secagg', 'noise_multiplier')} "
                              f"> 0 (now {config.secagg.mode!r} and {config.secagg.noise_multiplier:g})")  # fmt: skip
    elif privacy.mode == "local-dp":
        if privacy.adaptive_clip:
            raise ConfigError(f"{where('privacy', 'adaptive_clip')}: adaptive clipping needs a trusted gateway to "
                              f"noise the devices' bits; not with {mode}")  # fmt: skip
        if rounds.clip_norm:
            raise ConfigError(f"{where('rounds', 'clip_norm')} = {rounds.clip_norm:g}: updates under {mode} carry "
                              f"their noise, and clipping them would scale it down; the clip is "
                              f"{where('privacy', 'clip')}, applied on the devices")  # fmt: skip
    else:
        clashes = []
        if rounds.mode != "sync":
            clashes.append(f"{where('rounds', 'mode')} = {rounds.mode!r} (buffers are not Poisson samples)")
        if rounds.overprovision:
            clashes.append(f"{where('rounds', 'overprovision')} = {rounds.overprovision:g} (a device that answers "
                           "first would push another out: the sum would move by two clips)")  # fmt: skip
        if rounds.fraction != 1.0:
            clashes.append(f"{where('rounds', 'fraction')} = {rounds.fraction:g} (devices are sampled with "
                           f"{where('privacy', 'sampling_rate')} instead)")  # fmt: skip
        if rounds.min_updates != 1:
            clashes.append(f"{where('rounds', 'min_updates')} = {rounds.min_updates} (a round that fails on a count "
                           "would publish the count)")  # fmt: skip
        if rounds.clip_norm:
            clashes.append(f"{where('rounds', 'clip_norm')} = {rounds.clip_norm:g} (the clip is "
                           f"{where('privacy', 'clip')})")  # fmt: skip
        if buffered:
            clashes.append(f"{where('strategy', 'name')} = {config.strategy_name!r} (it reads single updates; "
                           "only the noised sum is private)")  # fmt: skip
        if clashes:
            raise ConfigError(f"{mode} is not accounted with: " + "; ".join(clashes))
    try:
        import dp_accounting  # noqa: F401 - the accountant; imported here so a missing extra is said at start
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{mode} needs the accountant dp-accounting (the 'privacy' extra): "
                          "pip install 'tinyfed[privacy]'") from exc


def check_secagg(config: GatewayConfig, buffered: bool, env: Mapping[str, str] | None = None) -> None:
    """Refuse the settings a secure aggregation round cannot keep: one session per round, over the devices
    asked when it opened, whose sum is the round's only input (docs/secagg.md)."""
    secagg, rounds, source = config.secagg, config.rounds, config.source
    if not secagg.on:
        return

    def where(table_name: str, key: str) -> str:
        return setting(source, table_name, key, env)

    clashes = []
    if rounds.mode != "sync":
        clashes.append(f"{where('rounds', 'mode')} = {rounds.mode!r} (a session sums one round's devices)")
    if rounds.min_devices < 3:
        clashes.append(f"{where('rounds', 'min_devices')} = {rounds.min_devices} (below 3, the published sum tells "
                       "a device the other's input)")  # fmt: skip
    if rounds.overprovision:
        clashes.append(f"{where('rounds', 'overprovision')} = {rounds.overprovision:g} (every device asked is in "
                       "the session; none replaces another)")  # fmt: skip
    if config.privacy.on and config.privacy.mode != "distributed-dp":
        clashes.append(f"{where('privacy', 'mode')} = {config.privacy.mode!r} (the gateway sees no single update; "
                       f"distributed DP is {where('secagg', 'noise_multiplier')}, its budget [privacy] mode = "
                       "'distributed-dp')")  # fmt: skip
    if rounds.clip_norm:
        clashes.append(f"{where('rounds', 'clip_norm')} = {rounds.clip_norm:g} (the clip is "
                       f"{where('secagg', 'clip')}, applied on the devices)")  # fmt: skip
    if buffered:
        clashes.append(f"{where('strategy', 'name')} = {config.strategy_name!r} (it reads single updates; "
                       "only the sum exists)")  # fmt: skip
    if config.robustness.detect:
        clashes.append(f"{where('robustness', 'detect')} = true (the detector scores single updates; only the "
                       "sum exists)")  # fmt: skip
    if rounds.deadline <= 4 * secagg.step_deadline:
        clashes.append(f"{where('rounds', 'deadline')} = {rounds.deadline:g} (at most 4 x "
                       f"{where('secagg', 'step_deadline')} = {secagg.step_deadline:g} leaves no time to train)")
    if clashes:
        raise ConfigError(f"{where('secagg', 'mode')} = 'secagg' cannot run with: " + "; ".join(clashes))
    try:
        import cryptography  # noqa: F401 - X25519, HKDF, AES-GCM; imported here so a missing extra is said at start
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where('secagg', 'mode')} = 'secagg' needs cryptography (the 'sign' extra): "
                          "pip install 'tinyfed[gateway,sign]'") from exc


def strategy_options(strategy: type[Strategy]) -> type:
    """A dataclass of ``name`` and the strategy's constructor parameters, with their types and defaults.

    ``[strategy]`` is then read like every other table (unknown keys and wrong
    types named, ``TINYFED_STRATEGY_<KEY>`` overrides), and the strategy's own
    signature stays the one list of its options.
    """
    hints = typing.get_type_hints(strategy.__init__)
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=strategy.name))]
    for name, parameter in inspect.signature(strategy.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = dataclasses.MISSING if parameter.default is parameter.empty else parameter.default
        fields.append((name, hints.get(name, Any), dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{strategy.__name__}Options", fields)


def strategy_section(raw: Mapping[str, Any], source: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``[strategy]``: the name (file or ``TINYFED_STRATEGY_NAME``), then that strategy's options, each checked."""
    env = os.environ if env is None else env
    variable = env_name("strategy", "name")
    name = env[variable] if variable in env else raw.get("name", "fedavg")
    where = variable if variable in env else f"{source} [strategy] name"
    if not isinstance(name, str) or name not in STRATEGIES:
        guess = closest(name, STRATEGIES) if isinstance(name, str) else None
        hint = f" (did you mean {guess}?)" if guess else ""
        raise ConfigError(f"{where}: unknown strategy {name!r}{hint}; known: {', '.join(sorted(STRATEGIES))}")
    options_of = strategy_options(STRATEGIES[name])
    unknown = sorted(set(raw) - set(keys_of(options_of)))
    if unknown:
        known = [k for k in keys_of(options_of) if k != "name"]
        raise ConfigError(
            f"{source} [strategy]: {name} has no option {', '.join(unknown)}{did_you_mean(unknown, known)}; "
            f"its options: {', '.join(known)}"
        )
    options: Any = section(options_of, {**raw, "name": name}, "strategy", source, env)
    return dataclasses.asdict(options)
