"""Signatures enforced end to end, on a real Mosquitto with TLS: what a device, the bridge and the gateway believe.

Two brokers from the same provisioning (tests/trust.py): ``secured``, with the ACL, and ``owned``, the same
TLS listener with the ACL switched off, which is what someone who owns the broker (or any enrolled identity,
on a broker whose ACL is lost) can do: publish and read on every topic. Every attack here is made on the
``owned`` broker by ``mallory``, an enrolled device, and each is refused by a signature check, not by the
broker. docs/security.md's table of attacks names each test.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent, LocalData
from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.partition import device_share
from edge_runtime.keys import key_id, public_raw
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from edge_runtime.train.trainer import Trainer, cut_for_last_layers
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.fetcher import ModelTooLarge
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from gateway.config import GatewayConfig
from gateway.pki import provision
from gateway.pki.registry import read_registry
from gateway.service import Gateway
from tests.conftest import MOSQUITTO
from tests.helpers import Recorder, log_line, wait_for
from tests.trust import FEDERATION, WAIT, Secured, fast, install, installed, provisioned

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (.ci/run installs it)"),
]
T = Topics(FEDERATION)
DEVICES = ["dev-a", "dev-b", "dev-c", "mallory"]


# -- the federation ----------------------------------------------------------------------------------------------------
@pytest.fixture
def pki(tmp_path: Path) -> Any:
    return provisioned(tmp_path / "pki", DEVICES)


@pytest.fixture
def secured(pki: Any, tmp_path: Path) -> Iterator[Secured]:
    federation = Secured.start(pki, tmp_path / "broker")
    yield federation
    federation.close()


@pytest.fixture
def owned(pki: Any, tmp_path: Path) -> Iterator[Secured]:
    """The same broker without its ACL: every certificate holder may publish and read anything."""
    federation = Secured.start(pki, tmp_path / "broker", acl=False)
    yield federation
    federation.close()


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    stops: list[Callable[[], object]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def started(cleanup: list[Callable[[], object]], link: MqttLink) -> MqttLink:
    cleanup.append(link.stop)
    link.start()
    assert link.wait_ready(WAIT), f"{link.client_id}: {link.last_error}"
    return link


def signed_gateway(federation: Secured, tmp_path: Path, model: Path, **rounds: object) -> Gateway:
    return Gateway(GatewayConfig.from_mapping(federation.gateway_settings(tmp_path / "gw", model, **rounds), env={}))


class HandDevice:
    """An enrolled device driven by hand, on its own certificate: signs with its key, believes the gateway's."""

    def __init__(self, federation: Secured, name: str, cleanup: list[Callable[[], object]]) -> None:
        self.name = name
        self.signer = federation.signer(name)
        self.trust = federation.device_config(name)
        pinned = federation.gateway_signer().public_key()
        self.gateway = wire.Ed25519Verifier({key_id(public_raw(pinned)): pinned})
        self.link = federation.device_link(name)
        self.tasks: Recorder[wire.Task] = Recorder()
        self.receipts: Recorder[wire.Receipt] = Recorder()
        self.link.subscribe(T.task(name), lambda _, p: self.tasks.append(self.believe(p, wire.Task)))
        self.link.subscribe(T.receipt(name), lambda _, p: self.receipts.append(self.believe(p, wire.Receipt)))
        started(cleanup, self.link)
        self.seq = 7
        self.publish_presence(True)

    def believe(self, payload: bytes, kind: type[Any]) -> Any:
        return wire.decode(payload, expect=kind, verifier=self.gateway, require_signature=True)

    def sign(self, message: Any) -> bytes:
        return wire.sign(wire.encode(message), self.signer)

    def presence(self, online: bool) -> wire.Presence:
        caps = wire.Capabilities(ram=1 << 28, backend="hand", samples=50) if online else None
        return wire.Presence(self.name, online, self.seq, int(time.time()), caps)

    def publish_presence(self, online: bool) -> None:
        assert self.link.publish(T.presence(self.name), self.sign(self.presence(online)), retain=True, timeout=WAIT)

    def send(self, payload: bytes) -> bool:
        return self.link.publish(T.update(self.name), payload, timeout=WAIT)


def update_for(device: str, task: wire.Task, sizes: dict[int, int], update_id: bytes | None = None) -> wire.Update:
    tensor, numel = max(sizes.items(), key=lambda kv: kv[1])
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(5, 0.01, np.float32), 1.0)
    return wire.Update(update_id or os.urandom(16), device, task.round, task.base_version, 40,
                       [wire.TensorUpdate(tensor, numel, np.arange(5), values)])  # fmt: skip


def local_data(digits: DataSplit, shard: int) -> LocalData:
    own = device_share(digits.train, f"{shard}/4", "iid", seed=0)
    return LocalData(digits.train.subset(own[:-40]), digits.train.subset(own[-40:]))


# -- the happy path ----------------------------------------------------------------------------------------------------
def test_a_signed_federation_trains_over_tls_with_acls_and_everything_on_the_wire_is_signed(
    secured: Secured, tmp_path: Path, initial_model: Path, digits: DataSplit, backend: Backend,
    cleanup: list[Callable[[], object]],
) -> None:  # fmt: skip
    gateway = signed_gateway(secured, tmp_path, initial_model, rounds=1, min_devices=2, deadline=120.0)
    assert gateway.trust.signed
    gateway.start()
    cleanup.append(gateway.stop)
    agents = [DeviceAgent(secured.device_config(d), local_data(digits, i), backend) for i, d in enumerate(DEVICES[:2])]
    for agent in agents:
        assert agent.trust.signed
        cleanup.append(agent.stop)
        agent.start()
    assert gateway.finished.wait(WAIT * 4), "the signed federation did not finish its round"

    store = gateway.store
    registry = read_registry(secured.layout.registry)
    stored = store.round_updates(1, "train")
    assert sorted(u.device for u in stored) == ["dev-a", "dev-b"] and store.refusals() == []
    for update in stored:  # kept as received: the device's signature travels with its update into the store
        entry = registry.active_key(update.device)
        assert entry is not None
        opened = wire.open_envelope(update.payload, wire.DEFAULT_LIMITS,
                                    wire.Ed25519Verifier({entry.key_id: entry.public_key()}), require_signature=True)
        assert opened.verified and opened.key_id == entry.key_id
    # Every device believed a signed manifest, task and receipt: nothing was refused on their side.
    for agent in agents:
        assert not agent.refusals and agent.fetcher.refused_manifests == 0 and agent.sender.refused_receipts == 0
        assert agent.store.current_version == gateway.version or len(agent.done) >= 1
    # What the broker retains for the federation is the gateway's word, signed.
    seen: Recorder[bytes] = Recorder()
    reader = secured.device_link("dev-c")
    reader.subscribe(T.manifest, lambda _, p: seen.append(p))
    reader.subscribe(T.state, lambda _, p: seen.append(p))
    started(cleanup, reader)
    seen.wait_until(lambda got: len(got) >= 2, WAIT, "the retained manifest and state")
    pinned = wire.Ed25519Verifier({gateway.trust.signer.key_id: gateway.trust.signer.public_key()})  # type: ignore[union-attr]
    for payload in seen.items:
        assert wire.open_envelope(payload, wire.DEFAULT_LIMITS, pinned, require_signature=True).verified


# -- what a gateway believes -------------------------------------------------------------------------------------------
def test_a_forged_or_unsigned_update_is_refused_recorded_and_cannot_spoil_the_genuine_one(
    owned: Secured, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]]
) -> None:
    gateway = signed_gateway(owned, tmp_path, initial_model, min_devices=1, rounds=1)
    gateway.start()
    cleanup.append(gateway.stop)
    device = HandDevice(owned, "dev-a", cleanup)
    device.tasks.wait_until(lambda got: len(got) == 1, WAIT, "dev-a's task")
    task = device.tasks.items[0]
    mallory = started(cleanup, owned.device_link("mallory"))
    genuine = update_for("dev-a", task, gateway.sizes)
    stranger = wire.Ed25519Signer.generate()
    tampered = bytearray(device.sign(genuine))
    tampered[-1] ^= 1  # the last byte of the signature
    forgeries = {
        "unsigned": wire.encode(genuine),
        "mallory's key": wire.sign(wire.encode(genuine), owned.signer("mallory")),
        "a stranger's key": wire.sign(wire.encode(genuine), stranger),
        "tampered": bytes(tampered),
    }
    for payload in forgeries.values():  # each under the genuine update's id, on dev-a's topic
        assert mallory.publish(T.update("dev-a"), payload, timeout=WAIT)
    # And reports from a device that does not exist, to fill the hub's disk: refused, nothing of them stored.
    report = wire.Update(os.urandom(16), "ghost", task.round, task.base_version, 10**6, [],
                         metrics={"eval_accuracy": 1.0})  # fmt: skip
    assert mallory.publish(T.update("ghost"), wire.sign(wire.encode(report), stranger), timeout=WAIT)
    wait_for(lambda: len(gateway.store.refusals()) == 5, WAIT, "the gateway to refuse the five forgeries")
    refusals = gateway.store.refusals()
    reasons = [r["reason"] for r in refusals]
    assert "not signed" in reasons[0]
    assert "is device mallory's, not dev-a's" in reasons[1]
    assert "unknown key" in reasons[2]
    assert "signature does not verify" in reasons[3]
    assert "ghost has no valid key (not enrolled)" in reasons[4] and refusals[4]["device"] == "ghost"
    assert all(r["device"] == "dev-a" for r in refusals[:4])
    assert all(r["update_id"] is None for r in refusals)  # not the device's word: its id is not recorded
    assert gateway.open_round is not None and gateway.open_round.aggregate.count == 0
    # Nothing was receipted for them, and the id they carried was not spoiled: dev-a's own update counts.
    assert device.send(device.sign(genuine))
    device.receipts.wait_until(lambda got: len(got) == 1, WAIT, "the receipt of dev-a's genuine update")
    assert device.receipts.items[0].received == [genuine.update_id]
    wait_for(lambda: gateway.store.rounds()[0].status == "closed", WAIT, "round 1 to close on the genuine update")


def test_a_replayed_update_is_refused_and_counted_once(
    owned: Secured, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]]
) -> None:
    gateway = signed_gateway(owned, tmp_path, initial_model, min_devices=1, rounds=2)
    gateway.start()
    cleanup.append(gateway.stop)
    mallory = owned.device_link("mallory")
    captured: Recorder[bytes] = Recorder()
    mallory.subscribe(T.update("dev-a"), lambda _, p: captured.append(p))  # the ACL would not let it read this
    started(cleanup, mallory)
    device = HandDevice(owned, "dev-a", cleanup)
    device.tasks.wait_until(lambda got: len(got) == 1, WAIT, "dev-a's task for round 1")
    update = update_for("dev-a", device.tasks.items[0], gateway.sizes)
    assert device.send(device.sign(update))
    captured.wait_until(lambda got: len(got) == 1, WAIT, "mallory to capture dev-a's signed update")
    device.tasks.wait_until(lambda got: len(got) == 2, WAIT, "round 1 to close and round 2's task")
    for _ in range(2):  # replayed in round 2: a valid signature, an id already counted
        assert mallory.publish(T.update("dev-a"), captured.items[0], timeout=WAIT)
    wait_for(lambda: len(gateway.store.refusals()) == 2, WAIT, "the gateway to record both replays")
    assert {r["reason"] for r in gateway.store.refusals()} == {"duplicate of an update already counted"}
    assert [u.update_id for u in gateway.store.round_updates(1)] == [update.update_id]
    assert gateway.store.round_updates(2) == []


def test_refused_presence_messages_under_made_up_names_are_counted_without_growing_the_counter(
    owned: Secured, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]]
) -> None:
    """The name a refused presence is counted under is its topic's, the sender's word: one who owns the broker
    could make the counter grow by one entry per made-up name, without end."""
    gateway = signed_gateway(owned, tmp_path, initial_model, min_devices=5)  # no round: presence only
    gateway.start()
    cleanup.append(gateway.stop)
    mallory = started(cleanup, owned.device_link("mallory"))
    sent = 1024 + 200  # 1,024 names are counted one by one (gateway.service.REFUSED_PRESENCE_NAMES)
    for i in range(sent):
        ghost = wire.Presence(f"ghost-{i}", True, 1, int(time.time()), wire.Capabilities(ram=1 << 20, samples=1))
        mallory.publish(T.presence(f"ghost-{i}"), wire.sign(wire.encode(ghost), owned.signer("mallory")))
    wait_for(lambda: sum(gateway.refused_presence.values()) == sent, WAIT, f"the gateway to refuse {sent} presences")
    assert len(gateway.refused_presence) == 1024 + 1, len(gateway.refused_presence)  # it was one entry per name
    assert gateway.refused_presence["(other names)"] == 200 and gateway.refused_presence["ghost-0"] == 1


def test_a_forged_death_cannot_evict_a_device_nor_a_forged_birth_enrol_a_ghost(
    owned: Secured, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]]
) -> None:
    gateway = signed_gateway(owned, tmp_path, initial_model, min_devices=5)  # no round: presence only
    gateway.start()
    cleanup.append(gateway.stop)
    device = HandDevice(owned, "dev-a", cleanup)
    wait_for(lambda: (r := gateway.registry.get("dev-a")) is not None and r.online, WAIT, "dev-a's signed birth")
    mallory = started(cleanup, owned.device_link("mallory"))
    death = device.presence(False)  # the right start counter: only the signature is missing or wrong
    assert mallory.publish(T.presence("dev-a"), wire.encode(death), retain=True, timeout=WAIT)
    forged = wire.sign(wire.encode(death), owned.signer("mallory"))
    assert mallory.publish(T.presence("dev-a"), forged, retain=True, timeout=WAIT)
    ghost = wire.Presence("ghost", True, 1, int(time.time()), wire.Capabilities(ram=1 << 30, samples=1 << 32))
    assert mallory.publish(T.presence("ghost"), wire.sign(wire.encode(ghost), owned.signer("mallory")),
                           retain=True, timeout=WAIT)  # fmt: skip
    wait_for(lambda: sum(gateway.refused_presence.values()) == 3, WAIT, "the gateway to refuse three presences")
    assert gateway.refused_presence == {"dev-a": 2, "ghost": 1}
    record = gateway.registry.get("dev-a")
    assert record is not None and record.online  # not evicted
    assert gateway.registry.get("ghost") is None  # not enrolled by a birth nobody signed for it
    device.publish_presence(False)  # dev-a's own death, signed: that one counts
    wait_for(lambda: not gateway.registry.get("dev-a").online, WAIT, "dev-a's own death")  # type: ignore[union-attr]


@pytest.mark.parametrize("acl", [True, False], ids=["acl", "acl-off"])
def test_a_revoked_device_is_refused_at_the_broker_and_the_gateway_and_the_round_completes_without_it(
    pki: Any, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]], acl: bool
) -> None:
    federation = Secured.start(pki, tmp_path / "broker", acl=acl)
    cleanup.append(federation.close)
    gateway = signed_gateway(federation, tmp_path, initial_model, min_devices=3, rounds=1, deadline=600.0)
    devices = [HandDevice(federation, name, cleanup) for name in DEVICES[:3]]
    gateway.start()
    cleanup.append(gateway.stop)
    for device in devices:
        device.tasks.wait_until(lambda got: len(got) == 1, WAIT, f"{device.name}'s task")
    a, b, c = devices
    with log_line("gateway.registry", "dev-c is out of the federation") as expelled:
        provision.revoke(pki.root, "dev-c", reason="stolen")
        federation.broker.reload()
        assert expelled.wait(WAIT), "the gateway did not notice the revocation"
    late = c.sign(update_for("dev-c", c.tasks.items[0], gateway.sizes))
    if acl:
        assert not c.send(late)  # the broker: PUBACK "not authorized"
    else:
        assert c.send(late)  # delivered; the gateway refuses the revoked key
        wait_for(lambda: gateway.store.refusals(), WAIT, "the gateway to refuse dev-c's update")
        assert "dev-c was revoked" in gateway.store.refusals()[0]["reason"]
        assert "stolen" in gateway.store.refusals()[0]["reason"]
    for device in (a, b):
        assert device.send(device.sign(update_for(device.name, device.tasks.items[0], gateway.sizes)))
    # dev-c's task counts as failed: the round closes on the others' updates, long before its deadline.
    wait_for(lambda: gateway.store.rounds()[0].status == "closed", WAIT, "round 1 to close without dev-c")
    assert sorted(u.device for u in gateway.store.round_updates(1, "train")) == ["dev-a", "dev-b"]
    assert {s["device"]: s["status"] for s in gateway.store.selections(1)}["dev-c"] == "failed"
    record = gateway.registry.get("dev-c")
    assert record is not None and not record.online and record.failure is not None  # never selected again
    # Out in the store as well: its will is signed with the revoked key and refused, so without this status
    # would show it online for good.
    row = next(d for d in gateway.store.devices() if d["device"] == "dev-c")
    assert not row["online"] and "its key was revoked" in row["failure"] and "stolen" in row["failure"]
    # Its next connection is refused at the TLS handshake (the CRL), before MQTT.
    c.link.stop()
    again = federation.device_link("dev-c")
    cleanup.append(again.stop)
    again.start()
    wait_for(lambda: "certificate verify failed" in federation.broker.log_path.read_text(errors="replace"), WAIT,
             "the broker to refuse dev-c's certificate")  # fmt: skip
    assert not again.connected.is_set()


def test_a_device_revoked_while_the_gateway_was_down_is_out_at_its_start_and_status_says_why(
    secured: Secured, pki: Any, tmp_path: Path, initial_model: Path, cleanup: list[Callable[[], object]]
) -> None:
    gateway = signed_gateway(secured, tmp_path, initial_model, min_devices=3, deadline=600.0)
    a, b = HandDevice(secured, "dev-a", cleanup), HandDevice(secured, "dev-b", cleanup)
    gateway.start()
    wait_for(lambda: all((r := gateway.registry.get(d.name)) is not None and r.online for d in (a, b)), WAIT,
             "both devices' births")  # fmt: skip
    gateway.stop()
    provision.revoke(pki.root, "dev-b", reason="sold")
    again = signed_gateway(secured, tmp_path, initial_model, min_devices=3, deadline=600.0)
    with log_line("gateway.registry", "dev-b is out of the federation") as expelled:
        again.start()
        cleanup.append(again.stop)
        assert expelled.wait(WAIT), "the restarted gateway did not take out the device revoked while it was down"
    record = again.registry.get("dev-b")
    assert record is not None and not record.online and "sold" in (record.failure or "")
    again.stop()
    toml = tmp_path / "status.toml"
    toml.write_text(f'[gateway]\nfederation = "{FEDERATION}"\nstorage = "{tmp_path / "gw"}"\n'
                    f'model = "{initial_model}"\n[rounds]\nmin_devices = 3\n')  # fmt: skip
    status = subprocess.run([sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(toml)],
                            capture_output=True, text=True, timeout=WAIT)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "1 out (revoked or not enrolled)" in status.stdout
    # min_devices 3 with one device left that may be asked: status says why no round opens.
    assert "WAITING: 1 online device(s) that may be asked, [rounds] min_devices = 3" in status.stdout
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("dev-b"))
    assert " offline " in line and "OUT: its key was revoked" in line and "sold" in line


# -- what a device believes --------------------------------------------------------------------------------------------
class SignedStandIn:
    """The gateway's side of a device's contract, signed with the gateway's provisioned key, receipting on demand."""

    def __init__(self, federation: Secured, cleanup: list[Callable[[], object]]) -> None:
        self.signer = federation.gateway_signer()
        self.link = MqttLink(federation.gateway_broker(), provision.gateway_identity(FEDERATION))
        self.updates: Recorder[tuple[bytes, Any]] = Recorder()
        self.manifest: wire.ModelManifest | None = None  # the last one published: compact updates are read by it
        self.link.subscribe(T.all_updates, self._on_update)
        started(cleanup, self.link)

    def _on_update(self, topic: str, payload: bytes) -> None:
        m = self.manifest  # as the gateway reads an update: CBOR, or compact (the default) against the model
        self.updates.append((payload, wire.decode(payload, spec=m.spec() if m else None, device=T.device_of(topic),
                                                  versions=[m.version] if m else [])))  # fmt: skip

    def seal(self, message: Any) -> bytes:
        return wire.sign(wire.encode(message), self.signer)

    def publish_model(self, manifest: wire.ModelManifest, chunks: list[wire.ModelChunk]) -> None:
        self.manifest = manifest
        publish_model(self.link, T, manifest, chunks, seal=lambda b: wire.sign(b, self.signer))

    def task(self, device: str, task: wire.Task) -> None:
        assert self.link.publish(T.task(device), self.seal(task), timeout=WAIT)

    def receipt(self, device: str, update_id: bytes) -> None:
        assert self.link.publish(T.receipt(device), self.seal(wire.Receipt([update_id])), timeout=WAIT)


def trainable(graph: Graph) -> list[wire.TrainableTensor]:
    shapes = Trainer(graph, cut=cut_for_last_layers(graph, 1)).trainable_tensors()
    return [wire.TrainableTensor(t, s) for t, s in shapes.items()]


def a_task(version: bytes, round_: int = 1, deadline: float = 120.0) -> wire.Task:
    return wire.Task(os.urandom(16), round_, version, 1, 0.05, 0.05, int(time.time() + deadline))


@pytest.fixture
def device_side(
    owned: Secured, digits: DataSplit, digits_mlp: Graph, backend: Backend, cleanup: list[Callable[[], object]]
) -> tuple[SignedStandIn, DeviceAgent, wire.ModelManifest, MqttLink]:
    """dev-a (a real agent, signed) with its model installed from the stand-in; mallory connected."""
    gateway = SignedStandIn(owned, cleanup)
    manifest, chunks = make_manifest(write_graph(digits_mlp), trainable(digits_mlp), 4096, federation=FEDERATION)
    gateway.publish_model(manifest, chunks)
    agent = DeviceAgent(owned.device_config("dev-a", trainable_layers=1), local_data(digits, 0), backend)
    cleanup.append(agent.stop)
    agent.start()
    assert agent.fetcher.installed.wait(WAIT) and agent.store.current_version == manifest.version
    mallory = started(cleanup, owned.device_link("mallory"))
    return gateway, agent, manifest, mallory


def test_a_forged_task_and_a_forged_receipt_are_ignored_by_the_device(
    device_side: tuple[SignedStandIn, DeviceAgent, wire.ModelManifest, MqttLink],
) -> None:
    gateway, agent, manifest, mallory = device_side
    forged = a_task(manifest.version, round_=1)
    assert mallory.publish(T.task("dev-a"), wire.encode(forged), timeout=WAIT)
    someone = wire.sign(wire.encode(forged), wire.Ed25519Signer.generate())  # signed, by a key not pinned
    assert mallory.publish(T.task("dev-a"), someone, timeout=WAIT)
    wait_for(lambda: agent.refusals["signature"] == 2, WAIT, "the device to refuse both forged tasks")
    gateway.task("dev-a", a_task(manifest.version, round_=2))
    gateway.updates.wait_until(lambda got: len(got) == 1, WAIT, "the update for the genuine task")
    payload, update = gateway.updates.items[0]
    wait_for(lambda: agent.done, WAIT, "the device to note its update")  # noted just after it went to the outbox
    assert update.round == 2 and [u.round for u in agent.done] == [2]  # the forged task was never worked on
    opened = wire.open_envelope(payload, wire.DEFAULT_LIMITS)
    assert opened.key_id == agent.trust.signer.key_id  # type: ignore[union-attr]
    # A receipt from anyone but the gateway would make the device forget an update the gateway never saw.
    assert len(agent.outbox) == 1
    assert mallory.publish(T.receipt("dev-a"), wire.encode(wire.Receipt([update.update_id])), timeout=WAIT)
    wait_for(lambda: agent.sender.refused_receipts == 1, WAIT, "the device to refuse the forged receipt")
    assert len(agent.outbox) == 1
    gateway.receipt("dev-a", update.update_id)
    assert agent.outbox.wait_empty(WAIT), "the gateway's own receipt did not clear the update"


def another_model(digits: DataSplit, seed: int) -> bytes:
    return write_graph(build_model("mlp", digits.train.x, digits.train.classes, seed=seed))


def test_a_forged_model_is_not_installed_and_the_last_good_one_stays(
    device_side: tuple[SignedStandIn, DeviceAgent, wire.ModelManifest, MqttLink], digits: DataSplit,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gateway, agent, manifest, mallory = device_side
    caplog.set_level(logging.WARNING, logger="edge_runtime.transport.fetcher")
    forged, chunks = make_manifest(another_model(digits, 1), manifest.trainable, 4096, federation=FEDERATION)
    for chunk in chunks:
        assert mallory.publish(T.chunk(forged.version, chunk.index), wire.encode(chunk), retain=True, timeout=WAIT)
    someone = wire.Ed25519Signer.generate()
    for sealed in (wire.encode(forged), wire.sign(wire.encode(forged), someone)):
        assert mallory.publish(T.manifest, sealed, retain=True, timeout=WAIT)
    wait_for(lambda: agent.fetcher.refused_manifests == 2, WAIT, "the device to refuse both forged manifests")
    # Refused before anything else: nothing fetched, the model in use and the federation's announced one kept.
    assert agent.store.current_version == manifest.version and agent.fetcher.assembler is None
    assert agent.fetcher.announced is not None and agent.fetcher.announced.version == manifest.version
    # A reconnect (its subscriptions made again) brings the retained forgery again: refused again, logged once.
    agent.link._client.disconnect()
    wait_for(lambda: agent.fetcher.refused_manifests == 3, WAIT, "the retained forgery after a reconnect")
    assert caplog.text.count("refused a manifest") == 2 and "not signed" in caplog.text
    assert agent.store.current_version == manifest.version

    # The gateway's next model, with a forged chunk retained in its place: refused on arrival, fetched again
    # once the gateway's own chunk is there, and the model installs.
    following, following_chunks = make_manifest(another_model(digits, 2), manifest.trainable, 4096,
                                                federation=FEDERATION, parent=manifest.version)  # fmt: skip
    data = b"x" * len(following_chunks[0].data)
    bad = wire.ModelChunk(following.version, 0, data, hashlib.sha256(data).digest())  # its own digest agrees
    assert mallory.publish(T.chunk(following.version, 0), wire.encode(bad), retain=True, timeout=WAIT)
    for chunk in following_chunks[1:]:
        assert gateway.link.publish(T.chunk(following.version, chunk.index), wire.encode(chunk), retain=True,
                                    timeout=WAIT)  # fmt: skip
    assert gateway.link.publish(T.manifest, gateway.seal(following), retain=True, timeout=WAIT)
    wait_for(lambda: agent.fetcher.refused >= 1, WAIT, "the forged chunk to be refused on arrival")
    assert agent.store.current_version == manifest.version and following.version not in agent.fetcher.failed
    assert gateway.link.publish(T.chunk(following.version, 0), wire.encode(following_chunks[0]), retain=True,
                                timeout=WAIT)  # fmt: skip
    wait_for(lambda: agent.store.current_version == following.version, WAIT, "the gateway's model to install")


def test_a_task_due_too_far_ahead_or_already_past_is_refused_and_a_later_round_replaces_earlier_ones(
    device_side: tuple[SignedStandIn, DeviceAgent, wire.ModelManifest, MqttLink], digits: DataSplit,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gateway, agent, manifest, _ = device_side
    caplog.set_level(logging.INFO, logger="edge_runtime.member")  # what the member says of its tasks
    gateway.task("dev-a", a_task(manifest.version, round_=1, deadline=2 * 86400))  # beyond a day: a stalled device
    gateway.task("dev-a", a_task(manifest.version, round_=1, deadline=-5))
    wait_for(lambda: agent.refusals["deadline"] == 1 and agent.refusals["expired"] == 1, WAIT,
             "the device to refuse both tasks")  # fmt: skip
    # The federation's next model is announced, its chunks not yet there: tasks on it wait for it.
    coming, _ = make_manifest(another_model(digits, 2), manifest.trainable, 4096, federation=FEDERATION)
    assert gateway.link.publish(T.manifest, gateway.seal(coming), retain=True, timeout=WAIT)
    unknown = coming.version
    wait_for(lambda: agent.fetcher.announced is not None and agent.fetcher.announced.version == unknown, WAIT,
             "the device to see the next model announced")  # fmt: skip
    with log_line("edge_runtime.member", "waits for model") as waiting:
        gateway.task("dev-a", a_task(unknown, round_=5))
        assert waiting.wait(WAIT), "round 5's task did not start waiting for its model"
    with log_line("edge_runtime.member", "task for round 5 set aside") as set_aside:
        gateway.task("dev-a", a_task(unknown, round_=6))
        assert set_aside.wait(WAIT), "round 6's task did not replace round 5's"
    gateway.task("dev-a", a_task(manifest.version, round_=4))  # older than a task already taken
    wait_for(lambda: agent.refusals["superseded"] == 1, WAIT, "the device to refuse round 4's task")
    gateway.task("dev-a", a_task(manifest.version, round_=7))
    gateway.updates.wait_until(lambda got: len(got) == 1, WAIT, "round 7's update")
    wait_for(lambda: agent.done, WAIT, "the device to note its update")
    assert [u.round for u in agent.done] == [7] and not agent.failed  # 5 and 6 set aside, not reported failed
    assert isinstance(gateway.updates.items[0][1], wire.Update)


def test_a_model_larger_than_the_device_takes_is_refused_before_anything_is_downloaded(
    owned: Secured, digits: DataSplit, digits_mlp: Graph, backend: Backend, cleanup: list[Callable[[], object]]
) -> None:
    gateway = SignedStandIn(owned, cleanup)
    model = write_graph(digits_mlp)
    manifest, chunks = make_manifest(model, trainable(digits_mlp), 4096, federation=FEDERATION)
    gateway.publish_model(manifest, chunks)
    config = owned.device_config("dev-a", max_model_bytes=len(model) - 1)
    agent = DeviceAgent(config, local_data(digits, 0), backend)
    cleanup.append(agent.stop)
    agent.start()
    wait_for(lambda: manifest.version in agent.fetcher.failed, WAIT, "the device to refuse the model")
    assert isinstance(agent.fetcher.failed[manifest.version], ModelTooLarge)
    assert agent.fetcher.assembler is None and not any("/chunk/" in t for t in agent.link._handlers)  # not fetched
    gateway.task("dev-a", a_task(manifest.version))
    gateway.updates.wait_until(lambda got: len(got) == 1, WAIT, "the device's failure report")
    payload, report = gateway.updates.items[0]
    assert isinstance(report, wire.TaskFailure) and report.reason == wire.FailureReason.NO_MEMORY
    assert f"at most {len(model) - 1}" in report.detail and "[device] max_model_bytes" in report.detail
    assert wire.open_envelope(payload, wire.DEFAULT_LIMITS).key_id == agent.trust.signer.key_id  # type: ignore[union-attr]


# -- what the bridge believes and signs for its boards -----------------------------------------------------------------
def test_the_bridge_verifies_models_for_its_board_streams_no_forged_one_and_signs_with_the_boards_own_key(
    pki: Any, owned: Secured, tmp_path: Path, digits: DataSplit, digits_mlp: Graph,
    cleanup: list[Callable[[], object]],
) -> None:  # fmt: skip
    pytest.importorskip("serial")
    pytest.importorskip("tflite_micro")
    from edge_runtime.device_config import DataSection
    from edge_runtime.local_training import load_local_data
    from edge_runtime.member import MemberSettings
    from edge_runtime.transport.mqtt import BrokerConfig
    from edge_runtime.trust import MemberTrust
    from firmware_bridge.bridge import Bridge, PortSpec
    from hil.board import BoardSpec, EmulatedBoard

    install(pki, "mcu-a")  # the board's own identity: its bundle in the bridge's --bundles folder
    board = EmulatedBoard(tmp_path / "b.flash", BoardSpec(baud=921600, board_id="mcu-a"),
                          data=load_local_data(DataSection(source="digits", shard="0/10"))).start()  # fmt: skip
    cleanup.append(board.stop)
    gateway = SignedStandIn(owned, cleanup)
    manifest, chunks = make_manifest(write_graph(digits_mlp), trainable(digits_mlp), 4096, federation=FEDERATION)
    gateway.publish_model(manifest, chunks)
    base = MemberSettings(device_id="", federation=FEDERATION, storage=tmp_path / "bridge",
                          broker=fast(BrokerConfig(url=owned.broker.url, protocol="5")), resend_after=5.0,
                          trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(board.path, "mcu-a")], base, baud=921600, heartbeat=0.5,
                    bundles=installed(pki, "mcu-a").parent).start()  # fmt: skip
    cleanup.append(bridge.stop)
    wait_for(lambda: "mcu-a" in bridge.members and bridge.members["mcu-a"].transfers == 1, WAIT * 2,
             "the bridge to stream the gateway's model to the board")  # fmt: skip
    member = bridge.members["mcu-a"]
    assert member.trust.signed and board.model_version == manifest.version
    assert member.settings.broker.cert_file == str(installed(pki, "mcu-a") / "tls.crt")

    mallory = started(cleanup, owned.device_link("mallory"))
    forged, forged_chunks = make_manifest(another_model(digits, 1), manifest.trainable, 4096, federation=FEDERATION)
    for chunk in forged_chunks:
        assert mallory.publish(T.chunk(forged.version, chunk.index), wire.encode(chunk), retain=True, timeout=WAIT)
    for sealed in (wire.encode(forged), wire.sign(wire.encode(forged), owned.signer("mallory"))):
        assert mallory.publish(T.manifest, sealed, retain=True, timeout=WAIT)
    wait_for(lambda: member.fetcher.refused_manifests == 2, WAIT, "the bridge to refuse both forged manifests")
    assert member.store.current_version == manifest.version and member.fetcher.assembler is None  # nothing fetched

    gateway.task("mcu-a", a_task(manifest.version))
    gateway.updates.wait_until(lambda got: len(got) == 1, WAIT * 2, "the board's update through the bridge")
    payload, update = gateway.updates.items[0]
    entry = read_registry(pki.registry).active_key("mcu-a")
    assert entry is not None and isinstance(update, wire.Update) and update.device == "mcu-a"
    opened = wire.open_envelope(payload, wire.DEFAULT_LIMITS, wire.Ed25519Verifier({entry.key_id: entry.public_key()}),
                                require_signature=True)  # fmt: skip
    assert opened.verified  # the board's own key, held by the bridge
    assert board.model_version == manifest.version and member.transfers == 1  # no forged model was streamed


def test_the_demo_runs_a_provisioned_federation_over_tls_with_signatures(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tinyfed", "demo", "--data", "digits", "--rounds", "1"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "over mosquitto (TLS, ACL, signed)" in run.stdout and "INSECURE" not in run.stderr, run.stdout
    insecure = subprocess.run([sys.executable, "-m", "tinyfed", "demo", "--data", "digits", "--rounds", "1",
                               "--insecure"], capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert insecure.returncode == 0, insecure.stderr
    assert "over mosquitto:" in insecure.stdout and insecure.stderr.count("runs INSECURE") == 1, insecure.stderr
