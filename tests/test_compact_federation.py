"""Compact updates (type 10) end to end: real agents send them through Mosquitto; the gateway reads and refuses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import ManualDevice, gateway_config, start_agents


def test_agents_sending_compact_updates_run_a_federation_and_the_gateway_stores_them_as_sent(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    rounds = {"rounds": 3, "min_devices": 3, "epochs": 1, "learning_rate": 0.05, "density": 0.01, "report_every": 1}
    gateway = Gateway(GatewayConfig.from_mapping(gateway_config(broker, tmp_path / "gw", initial_model, **rounds),
                                                 env={})).start()  # fmt: skip
    agents = start_agents(broker, tmp_path, digits, default_backend(), 3, scheme="iid", update_format="compact")
    try:
        assert gateway.finished.wait(300), "the federation did not finish"
        spec = gateway.rounds.spec
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    assert store.refusals() == []
    sync = [r for r in store.rounds() if r.mode == "sync"]
    assert [r.status for r in sync] == ["closed"] * 3
    for row in sync:
        stored = store.round_updates(row.round, "train")
        assert len(stored) == 3
        for s in stored:
            assert s.payload[:1] == bytes([wire.MSG_UPDATE_COMPACT]), "the agent sent CBOR, not the compact layout"
            update = wire.decode(s.payload, spec=spec, device=s.device, versions=(row.base_version,))
            assert update.base_version == row.base_version and update.tensors
            assert len(s.payload) < len(wire.encode(update))  # the same update as CBOR is larger


def test_a_compact_update_on_an_unknown_base_or_damaged_is_refused_with_a_receipt(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    gateway = Gateway(GatewayConfig.from_mapping(gateway_config(broker, tmp_path / "gw", initial_model), env={}))
    gateway.start()
    device = ManualDevice(broker, "m1")
    try:
        assert device.wait(lambda: len(device.tasks) >= 1)
        task = device.tasks[0]
        spec = gateway.rounds.spec
        tensor = max(spec, key=lambda t: spec[t])
        values = wire.CodedValues(wire.ValueCoding.INT8, np.array([5, -7, 127], np.int8), 0.001)
        kept = [wire.TensorUpdate(tensor, spec[tensor], np.array([1, 9, 40]), values)]
        stranger = hashlib.sha256(b"a model this gateway never made").digest()
        unknown = wire.Update(wire.new_update_id(), "m1", task.round, stranger, 40, kept)
        device.send(wire.encode_compact(unknown, spec))
        damaged = wire.Update(wire.new_update_id(), "m1", task.round, task.base_version, 40, kept)
        device.send(wire.encode_compact(damaged, spec)[:-2])

        def refused(update_id: bytes) -> bool:
            return any(update_id in r.refused for r in device.receipts)

        assert device.wait(lambda: refused(unknown.update_id) and refused(damaged.update_id))
        reasons = {r: why for receipt in device.receipts for r, why in receipt.refused.items()}
        assert "unknown" in reasons[unknown.update_id] or "not the round's" in reasons[unknown.update_id]
        assert "ValueRejected" in reasons[damaged.update_id]
    finally:
        device.stop()
        gateway.stop()
