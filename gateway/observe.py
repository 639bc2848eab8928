"""The operator's endpoints beside a running gateway: ``[metrics]`` (Prometheus) and ``[dashboard]`` (a web page).

Both read the store through their own read-only connections, in their own threads: a scrape or a page view
never takes the gateway's store lock, so neither can hold up the round thread. Both are off unless the
config turns them on; ``tinyfed gateway run`` and the demo start them, tests start them around a ``Gateway``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from edge_runtime.config import ConfigError, setting

if TYPE_CHECKING:
    from .service import Gateway

log = logging.getLogger(__name__)


class Observers:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.metrics_url: str | None = None
        self.dashboard_url: str | None = None
        self._servers: list[Any] = []  # each has shutdown() and server_close()
        self._threads: list[threading.Thread] = []

    def _epsilon(self) -> tuple[float, float, float]:
        budget = self.gateway.rounds.privacy
        assert budget is not None
        spent = budget.spent()
        return spent.epsilon, spent.target, spent.delta

    def start(self) -> Observers:
        config = self.gateway.config
        db = config.storage / "gateway.db"
        if config.metrics.enabled:
            from .config import check_metrics_extra

            check_metrics_extra(config)
            from prometheus_client import start_http_server

            from .metrics import LiveFigures, registry_for

            live = LiveFigures(
                downlink_bytes=lambda: self.gateway.link.published_bytes,
                epsilon=self._epsilon if self.gateway.rounds.privacy is not None else None,
            )
            try:
                server, thread = start_http_server(config.metrics.port, config.metrics.host, registry_for(db, live))
            except OSError as exc:
                where = setting(config.source, "metrics", "port")
                raise ConfigError(f"{where}: cannot listen on {config.metrics.host}:{config.metrics.port}: "
                                  f"{exc.strerror or exc}") from exc  # fmt: skip
            self._servers.append(server)
            self._threads.append(thread)
            self.metrics_url = f"http://{_host(config.metrics.host)}:{server.server_port}/metrics"
            log.info("metrics at %s", self.metrics_url)
        if config.dashboard.enabled:
            from .dashboard.server import start_dashboard

            dashboard, thread = start_dashboard(config, self.gateway.rounds)
            self._servers.append(dashboard)
            self._threads.append(thread)
            self.dashboard_url = dashboard.url
            shown = dashboard.url + ("?token=..." if config.dashboard.token else "")
            log.info("dashboard at %s", shown)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._servers.clear()
        self._threads.clear()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
