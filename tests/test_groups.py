"""Per-group evaluation: a device declares its group (device.toml, carried in its birth), the label is checked as
hostile network input, and the final evaluation is broken down by group in the store and in ``gateway status``."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.wire.errors import SchemaError, WireError
from gateway.admission import AdmissionRules
from gateway.aggregate import update_norm
from gateway.clock import FakeClock
from gateway.config import ConfigError, GatewayConfig
from gateway.groups import by_group, status_lines
from gateway.policy import RoundPolicy, TaskSettings
from gateway.publisher import Publisher
from gateway.registry import Eligibility, Registry
from gateway.rounds import Rounds
from gateway.store import GatewayStore


def birth(group: object) -> bytes:
    caps = wire.Capabilities(ram=1, backend="x", samples=5, group="site-a").to_cbor()
    caps[wire.Capabilities.Key.GROUP] = group
    presence = wire.Presence("dev-01", True, 1, 1_700_000_000, wire.Capabilities()).to_cbor()
    presence[wire.Presence.Key.CAPABILITIES] = caps
    return bytes(cbor2.dumps(presence))


def test_a_group_label_round_trips_and_a_hostile_one_is_refused_naming_the_field() -> None:
    ok = wire.decode(birth("site-a.hall_2"), expect=wire.Presence)
    assert ok.capabilities is not None and ok.capabilities.group == "site-a.hall_2"
    for hostile in ("", "a/b", "x" * 33, "evil\n", "sité"):
        with pytest.raises(WireError, match=r"capabilities\.group"):
            wire.decode(birth(hostile), expect=wire.Presence)
    with pytest.raises(SchemaError, match="group"):
        wire.decode(birth(7), expect=wire.Presence)
    plain = wire.decode(wire.encode(wire.Presence("d", True, 1, 0, wire.Capabilities(samples=1))), expect=wire.Presence)
    assert plain.capabilities is not None and plain.capabilities.group == ""  # optional: older devices send none


def test_device_toml_declares_the_group_and_a_bad_one_is_named() -> None:
    config = DeviceConfig.from_mapping({"device": {"id": "d1", "group": "pi-zero"}, "trust": {"mode": "insecure"}},
                                       env={})  # fmt: skip
    assert config.device.group == "pi-zero"
    with pytest.raises(ConfigError, match=r"\[device\].*group 'a b'"):
        DeviceConfig.from_mapping({"device": {"id": "d1", "group": "a b"}, "trust": {"mode": "insecure"}}, env={})


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


GROUPS = {"a0": "site-a", "a1": "site-a", "b0": "site-b", "n0": ""}
ACCURACY = {"a0": 0.9, "a1": 0.8, "b0": 0.3, "n0": 0.7}
SAMPLES = {"a0": 10, "a1": 30, "b0": 20, "n0": 10}


def test_the_final_evaluation_is_broken_down_by_group_in_the_store_and_in_status(tmp_path: Path, model: bytes) -> None:
    (tmp_path / "initial.tflite").write_bytes(model)
    config = GatewayConfig.from_mapping(
        {"gateway": {"federation": "t", "storage": str(tmp_path / "gw"), "model": str(tmp_path / "initial.tflite")},
         "rounds": {"min_devices": 2, "deadline": 60.0, "rounds": 1}},
        env={},
    )  # fmt: skip
    store = GatewayStore(config.storage / "gateway.db")
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0))
    admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
    rounds = Rounds(store, Registry(store), Publisher(config, store, config.make_strategy()), policy, admission,
                    FakeClock())  # fmt: skip
    for name, group in GROUPS.items():
        caps = wire.Capabilities(ram=1 << 20, backend="x", samples=50, group=group)
        presence = wire.Presence(name, True, 1, 0, caps)
        rounds.registry.observe(presence, wire.encode(presence))
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    evaluated = None
    for _ in range(10):
        step = rounds.step()
        for device, task in step.tasks:
            if task.evaluate_only:
                update = wire.Update(os.urandom(16), device, task.round, task.base_version, SAMPLES[device], [],
                                     metrics={"eval_accuracy": ACCURACY[device]})  # fmt: skip
            else:
                values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(4, 0.01, np.float32), 1.0)
                update = wire.Update(os.urandom(16), device, task.round, task.base_version, 40,
                                     [wire.TensorUpdate(tensor, numel, np.arange(4), values)])  # fmt: skip
            raw = wire.encode(update)
            decoded = wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes))
            assert rounds.intake(decoded, raw, device, update_norm(decoded)).accepted
        if step.evaluated is not None:
            evaluated = step.evaluated
            break
    assert evaluated is not None, "the final evaluation never finished"
    groups = by_group(evaluated)
    assert groups["site-a"]["eval_accuracy"] == pytest.approx((10 * 0.9 + 30 * 0.8) / 40)
    assert groups["site-a"]["reports"] == 2
    assert groups["site-b"]["eval_accuracy"] == pytest.approx(0.3)
    assert groups["-"]["eval_accuracy"] == pytest.approx(0.7)  # declared none
    last = [r for r in store.rounds() if r.mode == "eval"][-1]
    assert by_group(store.metrics(last.round)) == groups  # kept with the round
    lines = status_lines(last.round, store.metrics(last.round))
    assert lines[1].split()[0] == "site-b"  # the group the model fails comes first
    assert "accuracy 0.3000, 1 reports" in lines[1]
