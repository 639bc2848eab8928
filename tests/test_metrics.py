"""The Prometheus endpoint scraped during a real federation on Mosquitto: the values move as rounds run."""

from __future__ import annotations

from pathlib import Path

from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.metrics import StoreCollector
from gateway.observe import Observers
from gateway.refusal_classes import refusal_class
from gateway.service import Gateway
from gateway.store import INSERT_REFUSAL, GatewayStore

from .federation import WAIT, ManualDevice, gateway_config
from .helpers import wait_for
from .operator import AnsweringDevice, scrape

CLOSED = 'tinyfed_rounds_total{mode="sync",status="closed"}'


def test_metrics_endpoint_follows_a_federation(broker: MosquittoProcess, tmp_path: Path, initial_model: Path) -> None:
    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=3, min_devices=2)
    settings["metrics"] = {"enabled": True, "port": 0}  # a free port
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    observers = Observers(gateway).start()
    devices: list[ManualDevice] = []
    try:
        assert observers.metrics_url is not None and observers.metrics_url.startswith("http://127.0.0.1:")
        before = scrape(observers.metrics_url)
        assert before.get(CLOSED, 0) == 0 and before["tinyfed_round_open"] == 0
        assert before['tinyfed_model_info{version="' + gateway.version.hex()[:12] + '"}'] == 1
        devices = [AnsweringDevice(broker, f"a{i}", gateway.sizes) for i in range(2)]
        devices[0].send(b"\xa3garbage")  # refused as malformed, recorded with its bytes
        url = observers.metrics_url
        wait_for(lambda: scrape(url).get(CLOSED, 0) >= 1, WAIT, "a closed round in the scrape")
        during = scrape(url)
        assert gateway.finished.wait(WAIT), "the three rounds and the final evaluation did not finish"
        after = scrape(url)
    finally:
        observers.stop()
        for device in devices:
            device.stop()
        gateway.stop()
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    closed = [r for r in store.rounds() if r.status == "closed"]
    assert after[CLOSED] == 3 > during[CLOSED] - 1 >= 0
    assert after['tinyfed_rounds_total{mode="eval",status="closed"}'] == 1
    assert after['tinyfed_updates_accepted_total{kind="train"}'] == 6
    assert after['tinyfed_updates_accepted_total{kind="eval"}'] == 2
    assert after['tinyfed_updates_refused_total{reason="malformed"}'] == 1
    assert after['tinyfed_uplink_bytes_total{outcome="accepted"}'] == sum(
        store.round_counts(r.round)["uplink_bytes"] for r in closed
    ) > during['tinyfed_uplink_bytes_total{outcome="accepted"}'] > 0
    assert after['tinyfed_uplink_bytes_total{outcome="refused"}'] == len(b"\xa3garbage")
    assert after["tinyfed_round_duration_seconds_count"] == len(closed) == 4
    assert after['tinyfed_round_duration_seconds_bucket{le="+Inf"}'] == 4
    assert after["tinyfed_round_duration_seconds_sum"] > 0
    assert after['tinyfed_devices{state="online"}'] == 2
    assert after["tinyfed_downlink_bytes_total"] > during["tinyfed_downlink_bytes_total"] > 0
    assert after["tinyfed_model_versions"] == 4  # the initial model and one per round
    assert after['tinyfed_model_info{version="' + store.current_version.hex()[:12] + '"}'] == 1  # type: ignore[union-attr]
    assert after["tinyfed_federated_accuracy"] == 0.5  # what the hand-made devices report
    assert "tinyfed_privacy_epsilon_spent" not in after  # DP is off
    store.close()


def test_refusal_reasons_fall_into_few_classes() -> None:
    assert refusal_class("round 99 is not the open round 3") == "wrong_round"
    assert refusal_class("update norm 1e+04 exceeds the bound 100") == "norm_bound"
    assert refusal_class("MalformedCBOR: truncated") == "malformed"
    assert refusal_class("replay of update id 0a1b (first refused: no round is open)") == "replay"
    assert refusal_class("base version 00ff is not the round's 11aa") == "wrong_base"
    assert refusal_class("ValueRejected: envelope.signature: signature does not verify") == "signature"
    assert refusal_class("ValueRejected: envelope.unprotected.kid: unknown key id 0a0b") == "signature"
    assert refusal_class("SchemaError: update.tensors: must be a list") == "malformed"
    assert refusal_class("something new") == "other"


def test_epsilon_is_exported_when_dp_is_on(broker: MosquittoProcess, tmp_path: Path, initial_model: Path) -> None:
    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=1, min_devices=2, report_every=5)
    settings["privacy"] = {"mode": "central-dp", "sampling_rate": 1.0, "noise_multiplier": 2.0, "clip": 0.01,
                           "epsilon": 50.0, "delta": 1e-3}  # fmt: skip
    settings["metrics"] = {"enabled": True, "port": 0}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    observers = Observers(gateway).start()
    devices: list[ManualDevice] = []
    try:
        assert observers.metrics_url is not None
        before = scrape(observers.metrics_url)
        assert before["tinyfed_privacy_epsilon_spent"] == 0 and before["tinyfed_privacy_epsilon_budget"] == 50
        devices = [AnsweringDevice(broker, f"p{i}", gateway.sizes) for i in range(2)]
        url = observers.metrics_url
        wait_for(lambda: scrape(url).get(CLOSED, 0) == 1, WAIT, "the DP round to close")
        after = scrape(url)
        spent = gateway.rounds.privacy.spent()  # type: ignore[union-attr]
    finally:
        observers.stop()
        for device in devices:
            device.stop()
        gateway.stop()
    assert 0 < after["tinyfed_privacy_epsilon_spent"] == spent.epsilon < 50
    assert after["tinyfed_privacy_delta"] == 1e-3


def test_refused_counters_do_not_go_down_when_retention_deletes_refusals(tmp_path: Path) -> None:
    """Prometheus reads a counter that went down as a restart: the totals of what [retention] refusals deleted
    are kept by class, and the counters add them."""
    store = GatewayStore(tmp_path / "gateway.db")
    reasons = ["round 9 is not the open round 3", "MalformedCBOR: truncated", "something new"]
    with store.transaction() as db:
        db.executemany(INSERT_REFUSAL, [(None, "d", 1, reasons[i % 3], 10 + i % 3, 0.0) for i in range(300)])

    def refused() -> dict[str, float]:
        found = {}
        for family in StoreCollector(tmp_path / "gateway.db").collect():
            for sample in family.samples:
                if sample.name == "tinyfed_updates_refused_total":
                    found[sample.labels["reason"]] = sample.value
                elif sample.name == "tinyfed_uplink_bytes_total" and sample.labels["outcome"] == "refused":
                    found["bytes"] = sample.value
        return found

    before = refused()
    assert before == {"wrong_round": 100, "malformed": 100, "other": 100, "bytes": 3300}
    assert store.prune_refusals(30) == 270
    assert len(store.refusals()) == 30
    assert refused() == before
    store.close()
