"""The bridge's Prometheus endpoint, scraped while two emulated boards federate through it on Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.member import MemberSettings
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.trust import MemberTrust
from tests.helpers import INSECURE, fast_config, wait_for

pytest.importorskip("serial")
pytest.importorskip("tflite_micro")

from firmware_bridge.bridge import Bridge, PortSpec
from firmware_bridge.metrics import start_metrics
from gateway.config import GatewayConfig
from gateway.service import Gateway

from .operator import scrape
from .test_bridge import BAUD, FED, WAIT, make_board


def test_the_bridge_metrics_follow_its_boards(broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph) -> None:
    model_path = tmp_path / "initial.tflite"
    model_path.write_bytes(write_graph(digits_mlp))
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": FED, "storage": str(tmp_path / "gw"), "model": str(model_path),
                        "trainable_layers": 1},
            "rounds": {"rounds": 1, "min_devices": 2, "deadline": 120.0, "report_every": 1, "density": 0.2},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,
        },
        env={},
    )  # fmt: skip
    boards = [make_board(tmp_path, f"mcu-{i}", f"{i}/10") for i in range(2)]
    settings = MemberSettings(device_id="", federation=FED, storage=tmp_path / "bridge",
                              broker=fast_config(broker, protocol="auto"), resend_after=5.0,
                              trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(b.path) for b in boards], settings, baud=BAUD, heartbeat=0.5)
    server, thread = start_metrics(bridge, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    gateway = None
    try:
        first = scrape(url)
        assert first["tinyfed_bridge_ports"] == 2 and first['tinyfed_bridge_boards{state="alive"}'] == 0
        bridge.start()
        gateway = Gateway(config).start()
        wait_for(lambda: scrape(url)['tinyfed_bridge_boards{state="alive"}'] == 2, WAIT, "both boards bridged")
        assert gateway.finished.wait(WAIT * 3), "the round of two boards did not finish"
        current = f'tinyfed_bridge_board_model_info{{board="mcu-0",version="{gateway.version.hex()[:12]}"}}'
        wait_for(lambda: scrape(url).get(current) == 1, WAIT, "mcu-0 on the round's model, in the scrape")
        after = scrape(url)
        for board in ("mcu-0", "mcu-1"):
            assert after[f'tinyfed_bridge_model_transfers_total{{board="{board}"}}'] >= 1
            assert after[f'tinyfed_bridge_published_bytes_total{{board="{board}"}}'] > 0
            assert after[f'tinyfed_bridge_serial_bytes_total{{board="{board}"}}'] > 0  # models and patches, framed
            assert f'tinyfed_bridge_patch_transfers_total{{board="{board}"}}' in after
        boards[1].hang()
        wait_for(lambda: scrape(url)['tinyfed_bridge_boards{state="dead"}'] == 1, WAIT, "the silent board, dead")
    finally:
        if gateway is not None:
            gateway.stop()
        bridge.stop()
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        for board in boards:
            board.stop()
