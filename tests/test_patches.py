"""Model versions as patches (wire/patch.py, gateway/downlink.py, transport/fetcher.py), through a real Mosquitto.

A device holding the parent installs the next version from the manifest's patch with no chunk fetched; one
that missed a version, or whose patch does not verify, fetches the whole model; a hostile patch is refused
with the field named, and the model in use stays.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.cbor import dumps
from gateway.config import GatewayConfig
from gateway.downlink import DownlinkPolicy, held_scales, publishable, sparsify
from gateway.publisher import Publisher
from gateway.service import Gateway
from gateway.store import GatewayStore
from gateway.strategies.fedavgm import FedAvgM
from tests.federation import FED as GW_FED
from tests.federation import gateway_config, start_agents
from tests.helpers import fast_config, log_line, wait_for
from tests.test_agent import FED, TOPICS, WAIT, agent_config, local_data, trainable_spec

GW_TOPICS = Topics(GW_FED)


def moved(model: bytes, seed: int, count: int = 40) -> bytes:
    """``model`` with ``count`` int8 weights of its last layer moved by one step: a version as a round makes it."""
    graph = read_graph(model)
    weights = graph.tensor(graph.operators[-2].inputs[1])
    assert weights.data is not None
    data = weights.data.copy().reshape(-1)
    where = np.random.default_rng(seed).choice(data.size, count, replace=False)
    data[where] = np.clip(data[where].astype(np.int16) + np.where(data[where] < 0, 1, -1), -127, 127).astype(np.int8)
    weights.set_data(data.reshape(weights.shape))
    return write_graph(graph)


def installed(agent: DeviceAgent, version: bytes) -> bool:
    """The fetcher is done with ``version`` (its counters moved): the store alone changes a moment earlier."""
    manifest = agent.fetcher.manifest
    return manifest is not None and manifest.version == version


def patched_manifest(base: bytes, model: bytes, trainable: list[wire.TrainableTensor]) -> wire.ModelManifest:
    manifest, _ = make_manifest(model, trainable, 4096, parent=hashlib.sha256(base).digest(), federation=FED)
    patch = wire.make_patch(base, model)
    assert patch is not None
    return dataclasses.replace(manifest, patch=patch)


# -- the codec, on real model bytes ---------------------------------------------------------------------------
def test_a_patch_turns_one_version_into_the_next_and_is_a_fraction_of_it(digits_mlp: Graph) -> None:
    base = write_graph(digits_mlp)
    new = moved(base, 1)
    manifest = patched_manifest(base, new, trainable_spec(digits_mlp))
    decoded = wire.decode(wire.encode(manifest), expect=wire.ModelManifest)
    assert decoded.patch is not None and decoded.patch.count == 40
    assert wire.apply_patch(base, decoded.patch) == new
    assert len(wire.encode(manifest)) - len(wire.encode(dataclasses.replace(manifest, patch=None))) < 120
    standalone = wire.make_patch(base, new)
    assert standalone is not None and wire.apply_patch(base, wire.decode(wire.encode(standalone))) == new
    assert wire.make_patch(base, new + b"\0") is None  # a layout that moved travels whole


def hostile(manifest: wire.ModelManifest, **patch_keys: object) -> bytes:
    """The manifest's bytes with its patch's keys replaced (by ModelPatch.Key name)."""
    body = manifest.to_cbor()
    sub = dict(body[wire.ModelManifest.Key.PATCH])
    for name, value in patch_keys.items():
        sub[wire.ModelPatch.Key[name.upper()]] = value
    body[wire.ModelManifest.Key.PATCH] = sub
    return dumps(body)


@pytest.mark.parametrize(
    ("keys", "field", "why"),
    [
        ({"count": 20_000}, "modelmanifest.patch.count", "changed bytes in a"),
        ({"size": 99}, "modelmanifest.patch.size", "manifest of"),
        ({"target": b"\1" * 32}, "modelmanifest.patch.target", "takes its target from the manifest"),
        ({"delta_k": 9}, "modelmanifest.patch.delta_k", "exceeds the bound"),
        ({"positions": "not bytes"}, "modelmanifest.patch.positions", "expected a byte string"),
    ],
)
def test_a_hostile_patch_is_refused_naming_its_field(
    digits_mlp: Graph, keys: dict[str, object], field: str, why: str
) -> None:
    base = write_graph(digits_mlp)
    manifest = patched_manifest(base, moved(base, 2), trainable_spec(digits_mlp))
    with pytest.raises(wire.WireError) as caught:
        wire.decode(hostile(manifest, **keys), expect=wire.ModelManifest)
    assert caught.value.field == field and why in str(caught.value)


def test_a_patch_that_does_not_fit_the_model_held_is_refused_before_a_byte_is_written(digits_mlp: Graph) -> None:
    base = write_graph(digits_mlp)
    new = moved(base, 3)
    patch = wire.make_patch(base, new)
    assert patch is not None
    other = moved(base, 4)
    with pytest.raises(wire.ValueRejected, match="not the model held") as caught:
        wire.apply_patch(other, patch)
    assert caught.value.field == "modelpatch.base"
    far = wire.make_patch(b"\0" * (len(base) + 10), b"\0" * (len(base) + 9) + b"\1")  # one offset past the end
    assert far is not None
    beyond = dataclasses.replace(patch, count=1, positions=far.positions, position_k=far.position_k,
                                 deltas=far.deltas, delta_k=far.delta_k)  # fmt: skip
    with pytest.raises(wire.ValueRejected, match="beyond") as caught:
        wire.apply_patch(base, beyond)
    assert caught.value.field == "modelpatch.positions"
    other = wire.make_patch(base, moved(base, 5))
    assert other is not None and other.count == patch.count
    wrong = dataclasses.replace(patch, positions=other.positions, position_k=other.position_k)
    with pytest.raises(wire.ValueRejected, match="does not hash to") as caught:
        wire.apply_patch(base, wrong)
    assert caught.value.field == "modelpatch"


# -- the publisher's side: scales held, moves bounded ----------------------------------------------------------
def test_scales_are_held_while_weights_fit_and_grow_with_headroom_when_they_must() -> None:
    policy = DownlinkPolicy(shrink=0.5, headroom=0.1, saturate=0.0)
    scales, held = held_scales(np.array([1.0, 1.0, 1.0]), np.array([0.9, 1.2, 0.3]), policy)
    assert held.tolist() == [True, False, False]
    assert scales.tolist() == pytest.approx([1.0, 1.32, 0.3])


def test_a_scale_is_held_while_its_weights_outgrow_it_by_at_most_saturate() -> None:
    policy = DownlinkPolicy(shrink=0.5, headroom=0.1, saturate=0.25)
    scales, held = held_scales(np.array([1.0, 1.0, 1.0]), np.array([1.2, 1.25, 1.3]), policy)
    assert held.tolist() == [True, True, False]
    assert scales.tolist() == pytest.approx([1.0, 1.0, 1.43])
    # A held channel's largest weights saturate at the int8 limit; the master keeps their float values.
    codes = sparsify(np.array([130.0, -140.0, 12.4]), np.array([127.0, -120.0, 12.0]), np.ones(3, bool), budget=3)
    assert codes.tolist() == [127, -127, 12]


@pytest.mark.parametrize(("saturate", "held"), [(0.25, True), (0.0, False)])
def test_the_gateways_downlink_saturate_setting_decides_whether_a_grown_channel_keeps_its_scale(
    tmp_path: Path, digits_mlp: Graph, saturate: float, held: bool
) -> None:
    """``[gateway] downlink_saturate`` reaches the publisher: a channel whose weights grew 10% past its scale keeps
    the scale (codes saturate) under 0.25 and is re-fitted under 0."""
    (tmp_path / "initial.tflite").write_bytes(write_graph(digits_mlp))
    config = GatewayConfig.from_mapping({"gateway": {
        "federation": "t", "storage": str(tmp_path / "gw"), "model": str(tmp_path / "initial.tflite"),
        "downlink_saturate": saturate}}, env={})  # fmt: skip
    publisher = Publisher(config, GatewayStore(config.storage / "gateway.db"), FedAvgM(momentum=0.9))
    tensor, (layer, _) = next((t, slot) for t, slot in publisher.master.slots.items() if slot[1] == "weight")
    before = read_graph(publisher.model).tensor(tensor).quant
    assert before is not None
    weights = publisher.master.weights()
    grown = layer.weight.copy()
    first: list[slice | int] = [slice(None)] * grown.ndim
    first[layer.channel_axis] = 0
    grown[tuple(first)] *= 1.1  # the first output channel outgrows its scale by 10%
    weights[tensor] = grown.astype(np.float64).reshape(-1)
    publisher.master.set_weights(weights)
    after = read_graph(publishable(publisher.model, publisher.master.export(), publisher.master,
                                   publisher.downlink)).tensor(tensor).quant  # fmt: skip
    assert after is not None
    kept = np.isclose(after.scale, before.scale)
    assert bool(kept[0]) is held
    assert kept[1:].all()  # the channels that did not grow keep their scales either way


def test_a_downlink_saturate_outside_zero_to_one_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"downlink_saturate 1\.5 is not in \[0, 1\]"):
        GatewayConfig.from_mapping({"gateway": {"federation": "t", "storage": str(tmp_path),
                                                "downlink_saturate": 1.5}}, env={})  # fmt: skip


def test_a_bounded_version_moves_the_largest_steps_and_leaves_the_rest_for_later() -> None:
    previous = np.zeros(10)
    ideal = np.array([0.2, 0.6, -1.7, 3.2, 0.0, -0.9, 0.0, 0.0, 0.0, 0.0])
    codes = sparsify(ideal, previous, np.ones(10, bool), budget=2)
    assert codes.tolist() == [0, 0, -2, 3, 0, 0, 0, 0, 0, 0]
    forced = sparsify(ideal, previous, np.array([False] * 5 + [True] * 5), budget=0)
    assert forced.tolist()[:5] == [0, 1, -2, 3, 0] and forced.tolist()[5:] == [0] * 5


# -- a real agent on Mosquitto --------------------------------------------------------------------------------
@pytest.fixture
def held(broker: MosquittoProcess, tmp_path: Path, digits: DataSplit, digits_mlp: Graph) -> Iterator[
    tuple[MqttLink, DeviceAgent, bytes]
]:
    """A device agent holding version 0 (fetched whole), and the link a test publishes versions on."""
    model = write_graph(digits_mlp)
    manifest, chunks = make_manifest(model, trainable_spec(digits_mlp), 4096, federation=FED)
    link = MqttLink(fast_config(broker), "publisher")
    link.start()
    assert link.wait_ready(WAIT)
    publish_model(link, TOPICS, manifest, chunks)
    agent = DeviceAgent(agent_config(broker, tmp_path / "dev-1"), local_data(digits), default_backend()).start()
    try:
        wait_for(lambda: installed(agent, manifest.version), WAIT, "version 0 installed")
        assert agent.fetcher.fetched == 1 and agent.fetcher.patched == 0
        yield link, agent, model
    finally:
        agent.stop(timeout=5)
        link.stop()


def test_a_device_holding_version_n_installs_n_plus_1_from_its_patch_alone(
    held: tuple[MqttLink, DeviceAgent, bytes], digits_mlp: Graph
) -> None:
    link, agent, base = held
    new = moved(base, 6)
    manifest = patched_manifest(base, new, trainable_spec(digits_mlp))
    # No chunk of the new version is on the broker: only the patch can install it.
    assert link.publish(TOPICS.manifest, wire.encode(manifest), retain=True, timeout=WAIT)
    wait_for(lambda: installed(agent, manifest.version), WAIT, "version 1 installed from its patch")
    assert agent.store.current() == new
    assert (agent.fetcher.patched, agent.fetcher.fetched, agent.fetcher.patch_failures) == (1, 1, 0)


def test_a_device_that_missed_a_version_fetches_the_whole_model(
    held: tuple[MqttLink, DeviceAgent, bytes], digits_mlp: Graph
) -> None:
    link, agent, base = held
    v1 = moved(base, 7)
    v2 = moved(v1, 8)
    manifest = patched_manifest(v1, v2, trainable_spec(digits_mlp))  # a patch against a version it never had
    publish_model(link, TOPICS, manifest, make_manifest(v2, manifest.trainable, 4096)[1])
    wait_for(lambda: installed(agent, manifest.version), WAIT, "version 2 fetched whole")
    assert (agent.fetcher.patched, agent.fetcher.fetched, agent.fetcher.patch_failures) == (0, 2, 0)


def test_a_patch_whose_result_does_not_verify_falls_back_to_the_whole_model(
    held: tuple[MqttLink, DeviceAgent, bytes], digits_mlp: Graph
) -> None:
    link, agent, base = held
    new = moved(base, 9)
    manifest = patched_manifest(base, new, trainable_spec(digits_mlp))
    assert manifest.patch is not None
    other = wire.make_patch(base, moved(base, 10))  # well formed, same count: the wrong bytes
    assert other is not None and other.count == manifest.patch.count
    bad = dataclasses.replace(manifest, patch=dataclasses.replace(manifest.patch, positions=other.positions,
                                                                  position_k=other.position_k))  # fmt: skip
    with log_line("edge_runtime.transport.fetcher", "does not hash to") as said:
        publish_model(link, TOPICS, bad, make_manifest(new, manifest.trainable, 4096)[1])
        wait_for(lambda: installed(agent, manifest.version), WAIT, "the whole model after a bad patch")
        assert said.is_set()
    assert agent.store.current() == new
    assert (agent.fetcher.patched, agent.fetcher.fetched, agent.fetcher.patch_failures) == (0, 2, 1)


def test_a_hostile_patch_on_the_broker_is_refused_and_the_model_in_use_stays(
    held: tuple[MqttLink, DeviceAgent, bytes], digits_mlp: Graph
) -> None:
    link, agent, base = held
    manifest = patched_manifest(base, moved(base, 11), trainable_spec(digits_mlp))
    with log_line("edge_runtime.transport.fetcher", "modelmanifest.patch.count") as said:
        assert link.publish(TOPICS.manifest, hostile(manifest, count=10**6), retain=True, timeout=WAIT)
        wait_for(lambda: agent.fetcher.refused_manifests == 1, WAIT, "the hostile manifest refused")
        assert said.wait(WAIT)  # said by paho's thread, which counts the refusal first
    assert agent.store.current_version == hashlib.sha256(base).digest()
    assert agent.fetcher.patched == 0 and agent.fetcher.fetched == 1


# -- a real gateway and real agents ---------------------------------------------------------------------------
def test_rounds_reach_devices_as_patches_with_one_birth_each(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    """Three rounds: every device ends on the gateway's model, versions 2 and 3 came as patches, and no device
    announced itself again for a new version (one birth with a model each)."""
    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=3, min_devices=2, epochs=1,
                              density=0.05, report_every=2)  # fmt: skip
    births: list[str] = []
    watcher = MqttLink(fast_config(broker), "watcher")
    watcher.subscribe(GW_TOPICS.all_presence, lambda topic, payload: births.append(topic)
                      if payload and wire.decode(payload, expect=wire.Presence).online else None)  # fmt: skip
    watcher.start()
    assert watcher.wait_ready(WAIT)
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 2, scheme="iid")
    try:
        assert gateway.finished.wait(WAIT * 3), "three rounds did not finish"
        wait_for(lambda: all(installed(a, gateway.publisher.version) for a in agents), WAIT,
                 "every device on the last version")  # fmt: skip
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
        watcher.stop()
    for agent in agents:
        assert agent.store.current() == gateway.model
        assert agent.fetcher.fetched == 1 and agent.fetcher.patched >= 2, (agent.fetcher.fetched, agent.fetcher.patched)
        assert agent.fetcher.patch_failures == 0
    # At most two births each: at connect (maybe before the first model) and once the first model is in.
    assert all(births.count(GW_TOPICS.presence(a.device_id)) <= 2 for a in agents), births
    # Restarted, the gateway offers the same patch: a device that held the parent still needs only that.
    published = gateway.publisher.manifest
    again = Gateway(GatewayConfig.from_mapping(settings, env={})).publisher.manifest
    assert published.patch is not None and again.patch is not None
    assert wire.encode(again.patch) == wire.encode(published.patch) and again.parent == published.parent


BASE_BYTES = bytes(range(256)) * 8
TARGET_BYTES = bytes((b + (i % 7 == 0)) % 256 for i, b in enumerate(BASE_BYTES))


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_a_mutated_patch_is_refused_or_yields_exactly_its_target(flips: list[tuple[int, int]]) -> None:
    """Whatever a patch's bytes say, applying it raises a WireError or returns bytes that hash to its target."""
    patch = wire.make_patch(BASE_BYTES, TARGET_BYTES)
    assert patch is not None
    data = bytearray(wire.encode(patch))
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        mutated = wire.decode(bytes(data), expect=wire.ModelPatch)
        result = wire.apply_patch(BASE_BYTES, mutated)
    except wire.WireError:
        return
    assert hashlib.sha256(result).digest() == mutated.target
