"""The Prometheus text endpoint (``[metrics]``): what the store says, read at each scrape.

Every value but the downlink bytes comes from the gateway's SQLite store through a read-only connection
opened for the scrape (``gateway.readonly``): the round thread never waits on a scrape for more than
SQLite's own WAL reader bookkeeping, and the numbers survive a restart because the store does (counters
that restart from the store's totals are what Prometheus' ``rate()`` expects). The bytes the gateway
published are the one figure the store does not keep: they are read from the live MQTT link.

Refusal reasons are free text naming rounds and versions; a label must have few values, so each reason is
reduced to a class (``refusal_class``), and the text stays in the store and in ``tinyfed gateway status``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .readonly import open_readonly
from .refusal_classes import refusal_class
from .report import device_state

log = logging.getLogger(__name__)

# Round durations (open to close) range from a second (a loopback test) to an hour (a deadline-bound field round).
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

@dataclass
class LiveFigures:
    """What only the running gateway knows: bytes it published, and the privacy budget (computed by it)."""

    downlink_bytes: Callable[[], int] | None = None
    epsilon: Callable[[], tuple[float, float, float]] | None = None  # (spent, target, delta)


class StoreCollector(Collector):
    """Reads the store at each scrape; yields nothing (and logs why) when the store cannot be read."""

    def __init__(self, db: Path, live: LiveFigures | None = None) -> None:
        self.db = db
        self.live = live or LiveFigures()

    def collect(self) -> Iterator[Metric]:
        try:
            connection = open_readonly(self.db)
        except Exception as exc:  # a scrape must not take the endpoint down; it says why in the log
            log.warning("metrics: cannot read %s: %s", self.db, exc)
            return
        try:
            yield from self._from_store(connection)
        finally:
            connection.close()
        yield from self._live()

    def _from_store(self, db: sqlite3.Connection) -> Iterator[Metric]:
        def rows(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            return db.execute(sql, args).fetchall()

        rounds = CounterMetricFamily("tinyfed_rounds", "Rounds ended, by mode and outcome", labels=["mode", "status"])
        for mode, status, n in rows("SELECT mode, status, COUNT(*) FROM rounds WHERE status != 'open' "
                                    "GROUP BY mode, status"):  # fmt: skip
            rounds.add_metric([mode, status], n)
        yield rounds
        last, open_ = rows("SELECT COALESCE(MAX(round), 0), "
                           "(SELECT COUNT(*) FROM rounds WHERE status = 'open') FROM rounds")[0]  # fmt: skip
        yield GaugeMetricFamily("tinyfed_round", "The latest round's number", value=last)
        yield GaugeMetricFamily("tinyfed_round_open", "1 while a round is open and collecting updates, else 0",
                                value=1 if open_ else 0)  # fmt: skip

        accepted = CounterMetricFamily("tinyfed_updates_accepted", "Updates accepted, by kind", labels=["kind"])
        uplink = CounterMetricFamily("tinyfed_uplink_bytes", "Bytes of updates received, by outcome",
                                     labels=["outcome"])  # fmt: skip
        dense = accepted_bytes = 0
        for kind, n, nbytes, dense_bytes in rows(
            "SELECT kind, COUNT(*), SUM(bytes), SUM(dense_bytes) FROM updates GROUP BY kind"
        ):
            accepted.add_metric([kind], n)
            accepted_bytes += nbytes
            dense += dense_bytes
        refused = CounterMetricFamily("tinyfed_updates_refused", "Messages refused, by class of reason",
                                      labels=["reason"])  # fmt: skip
        by_class: dict[str, int] = {}
        refused_bytes = 0
        for reason, n, nbytes in rows("SELECT reason, COUNT(*), COALESCE(SUM(bytes), 0) FROM refusals "
                                      "GROUP BY reason"):  # fmt: skip
            name = refusal_class(reason)
            by_class[name] = by_class.get(name, 0) + n
            refused_bytes += nbytes
        for name, n, nbytes in rows("SELECT class, count, bytes FROM refusals_pruned"):  # [retention] deleted them
            by_class[name] = by_class.get(name, 0) + n
            refused_bytes += nbytes
        for name, n in sorted(by_class.items()):
            refused.add_metric([name], n)
        uplink.add_metric(["accepted"], accepted_bytes)
        uplink.add_metric(["refused"], refused_bytes)
        yield accepted
        yield refused
        yield uplink
        yield CounterMetricFamily("tinyfed_uplink_dense_equivalent_bytes", "What the accepted training updates "
                                  "would have been as dense float32", value=dense)  # fmt: skip

        durations = [float(d) for (d,) in rows("SELECT closed - started FROM rounds WHERE status = 'closed' "
                                               "AND closed IS NOT NULL")]  # fmt: skip
        buckets = [(f"{le:g}", sum(1 for d in durations if d <= le)) for le in DURATION_BUCKETS]
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily("tinyfed_round_duration_seconds", "Closed rounds, from open to close",
                                    buckets=buckets, sum_value=sum(durations))  # fmt: skip

        devices = GaugeMetricFamily("tinyfed_devices", "Known devices, by state", labels=["state"])
        states = {"online": 0, "offline": 0, "failed": 0}
        for online, failure in rows("SELECT online, failure FROM devices"):
            states[device_state(online, failure)] += 1
        for state, n in states.items():
            devices.add_metric([state], n)
        yield devices

        current = rows("SELECT value FROM meta WHERE key = 'current_version'")
        version = current[0][0] if current else ""
        made = rows("SELECT round, seq FROM models WHERE version = ?", (version,)) if version else []
        info = GaugeMetricFamily("tinyfed_model_info", "The current model version (1 for it)", labels=["version"])
        if version:
            info.add_metric([version[:12]], 1)
        yield info
        yield GaugeMetricFamily("tinyfed_model_sequence", "The current model's position in the version history",
                                value=made[0][1] if made else 0)  # fmt: skip
        yield GaugeMetricFamily("tinyfed_model_versions", "Model versions kept in the store",
                                value=rows("SELECT COUNT(*) FROM models")[0][0])  # fmt: skip
        for name, help_text in (("eval_accuracy", "Federated accuracy of the latest evaluated round"),
                                ("eval_loss", "Federated loss of the latest evaluated round")):  # fmt: skip
            latest = rows("SELECT value FROM metrics WHERE name = ? ORDER BY round DESC LIMIT 1", (name,))
            if latest:
                yield GaugeMetricFamily(f"tinyfed_federated_{name.removeprefix('eval_')}", help_text,
                                        value=latest[0][0])  # fmt: skip

    def _live(self) -> Iterator[Metric]:
        if self.live.downlink_bytes is not None:
            yield CounterMetricFamily("tinyfed_downlink_bytes", "Bytes the gateway published to the broker (models, "
                                      "tasks, receipts, state; the broker's fan-out to each device is not counted)",
                                      value=self.live.downlink_bytes())  # fmt: skip
        if self.live.epsilon is not None:
            spent, target, delta = self.live.epsilon()
            yield GaugeMetricFamily("tinyfed_privacy_epsilon_spent", "Epsilon spent so far (the accountant's)",
                                    value=spent)  # fmt: skip
            yield GaugeMetricFamily("tinyfed_privacy_epsilon_budget", "The configured epsilon budget", value=target)
            yield GaugeMetricFamily("tinyfed_privacy_delta", "The configured delta", value=delta)


def registry_for(db: Path, live: LiveFigures | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(db, live))
    return registry
