"""``tinyfed bridge run --metrics-port N``: the bridge's Prometheus endpoint (the `metrics` extra).

What only the bridge knows: which boards answer on their serial lines, how many models it streamed to each,
and the bytes each board's MQTT link handed to the broker. Read from the live bridge at each scrape, in the
endpoint's own thread; nothing here touches a serial line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edge_runtime.config import ConfigError

if TYPE_CHECKING:
    from .bridge import Bridge


def _collector(bridge: Bridge) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    class BridgeCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            members = dict(bridge.members)
            boards = GaugeMetricFamily("tinyfed_bridge_boards", "Boards bridged, by whether they answer",
                                       labels=["state"])  # fmt: skip
            alive = sum(1 for m in members.values() if m.alive)
            boards.add_metric(["alive"], alive)
            boards.add_metric(["dead"], len(members) - alive)
            yield boards
            yield GaugeMetricFamily("tinyfed_bridge_ports", "Serial ports the bridge was given",
                                    value=len(bridge.ports))  # fmt: skip
            transfers = CounterMetricFamily("tinyfed_bridge_model_transfers", "Models streamed to a board",
                                            labels=["board"])  # fmt: skip
            patches = CounterMetricFamily("tinyfed_bridge_patch_transfers", "Model versions a board got as a patch "
                                          "(of tinyfed_bridge_model_transfers)", labels=["board"])  # fmt: skip
            serial = CounterMetricFamily("tinyfed_bridge_serial_bytes", "Bytes model and patch transfers put on "
                                         "a board's serial line, frames and resends included",
                                         labels=["board"])  # fmt: skip
            published = CounterMetricFamily("tinyfed_bridge_published_bytes", "Bytes a board's MQTT link handed "
                                            "to the broker (updates, births, reports)", labels=["board"])  # fmt: skip
            model = GaugeMetricFamily("tinyfed_bridge_board_model_info", "The model version a board runs (1)",
                                      labels=["board", "version"])  # fmt: skip
            for name, member in sorted(members.items()):
                transfers.add_metric([name], member.transfers)
                patches.add_metric([name], member.patch_transfers)
                serial.add_metric([name], member.line_bytes)
                published.add_metric([name], member.link.published_bytes)
                if member.board_version is not None:
                    model.add_metric([name, member.board_version.hex()[:12]], 1)
            yield transfers
            yield patches
            yield serial
            yield published
            yield model

    return BridgeCollector()


def start_metrics(bridge: Bridge, host: str, port: int) -> tuple[Any, Any]:
    """The endpoint's server and thread; ``ConfigError`` naming the option when it cannot be served."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ModuleNotFoundError as exc:
        raise ConfigError("--metrics-port needs prometheus-client (the 'metrics' extra): "
                          "pip install 'tinyfed[bridge,metrics]'") from exc  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_collector(bridge))
    try:
        return start_http_server(port, host, registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
