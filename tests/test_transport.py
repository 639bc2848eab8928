"""MQTT transport through a real Mosquitto on a free loopback port."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink, TransportError, Will
from edge_runtime.transport.outbox import Outbox, OutboxEntry
from edge_runtime.transport.sender import OutboxSender
from edge_runtime.transport.topics import Topics
from tests.helpers import fast_config, start_link, wait_for, watch_presence

TOPICS = Topics("test-fed")
WAIT = 20.0  # seconds: an upper bound for loopback delivery, never a performance assertion


class Collector:
    """A receiving side that counts updates once per update id and sends receipts, as the gateway will."""

    def __init__(self, link: MqttLink | None = None) -> None:
        self.link = link
        self.raw: list[bytes] = []
        self.by_id: dict[bytes, bytes] = {}
        self.changed = threading.Condition()

    def __call__(self, topic: str, payload: bytes) -> None:
        update = wire.decode(payload, expect=wire.Update)
        with self.changed:
            self.raw.append(payload)
            self.by_id.setdefault(update.update_id, payload)
            self.changed.notify_all()
        if self.link is not None:
            self.link.publish(TOPICS.receipt(TOPICS.device_of(topic)), wire.encode(wire.Receipt([update.update_id])))

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.by_id) >= count, timeout)


def update_bytes(i: int) -> tuple[bytes, bytes]:
    update_id = os.urandom(16)
    t = wire.TensorUpdate(
        0,
        1000,
        np.array([i, 500 + i]),
        wire.CodedValues(wire.ValueCoding.INT8, np.array([1, -1], np.int8), 0.1),
    )
    return update_id, wire.encode(wire.Update(update_id, "dev-1", 1, bytes(32), 10 + i, [t]))


def gateway_and_device(broker: MosquittoProcess) -> tuple[MqttLink, Collector, MqttLink]:
    """A receiving gateway stand-in (counting by id, sending receipts) and a device, both ready."""
    gateway = start_link(broker, "gateway")
    inbox = Collector(gateway)
    gateway.subscribe(TOPICS.all_updates, inbox)
    device = start_link(broker, "dev-1")
    assert gateway.wait_ready(WAIT) and device.wait_ready(WAIT)
    return gateway, inbox, device


def entry(update_id: bytes, payload: bytes, expires_in: float = 3600) -> OutboxEntry:
    return OutboxEntry(update_id, TOPICS.update("dev-1"), payload, time.time() + expires_in, label="update round 1")


def test_an_update_arrives_byte_exact(broker: MosquittoProcess, tmp_path: Path) -> None:
    gateway, inbox, device = gateway_and_device(broker)
    try:
        update_id, payload = update_bytes(1)
        sender = OutboxSender(device, Outbox(tmp_path / "outbox"), TOPICS.receipt("dev-1"))
        sender.submit(entry(update_id, payload))
        assert inbox.wait_for(1)
        assert inbox.by_id[update_id] == payload
        assert sender.outbox.wait_empty(WAIT), "the receipt did not empty the outbox"  # forgotten once receipted
    finally:
        device.stop()
        gateway.stop()


def test_broker_killed_mid_upload_loses_nothing_and_counts_each_update_once(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    gateway, inbox, device = gateway_and_device(broker)
    try:
        outbox = Outbox(tmp_path / "outbox")
        sender = OutboxSender(device, outbox, TOPICS.receipt("dev-1"), ack_timeout=2.0, resend_after=1.0)
        sent = [update_bytes(i) for i in range(30)]
        for update_id, payload in sent:
            outbox.put(entry(update_id, payload))
        flusher = threading.Thread(target=sender.flush)
        flusher.start()
        assert inbox.wait_for(3)  # a few through, the rest still going: kill the broker now
        broker.stop(kill=True)
        flusher.join(timeout=WAIT)
        assert len(outbox) > 0, "the kill came too late to interrupt the upload"
        broker.start()
        assert device.wait_ready(WAIT) and gateway.wait_ready(WAIT)
        sender.start(period=0.2)
        drained = outbox.wait_empty(WAIT)
        sender.stop()
        assert drained, (
            f"device connected={device.connected.is_set()} subscribed={device.subscribed.is_set()} "
            f"gateway connected={gateway.connected.is_set()} received={len(inbox.by_id)} raw={len(inbox.raw)} "
            f"log={broker.log_path.read_text()[-1500:]}"
        )
        got = inbox.wait_for(len(sent))
        missing = [i for i, (uid, _) in enumerate(sent) if uid not in inbox.by_id]
        assert got, f"missing updates {missing}; log: {broker.log_path.read_text()[-800:]}"
        assert {uid: p for uid, p in sent} == inbox.by_id  # every update, byte-exact, once per id
        assert len(inbox.raw) >= len(sent)  # QoS 1 may deliver twice; the id makes it count once
    finally:
        device.stop()
        gateway.stop()


def test_offline_update_waits_in_the_outbox_and_an_expired_one_is_dropped(
    broker: MosquittoProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start_link(broker, "gateway")
    inbox = Collector(gateway)
    gateway.subscribe(TOPICS.all_updates, inbox)
    assert gateway.wait_ready(WAIT)
    broker.stop()
    device = start_link(broker, "dev-1")
    try:
        outbox = Outbox(tmp_path / "outbox")
        sender = OutboxSender(device, outbox, TOPICS.receipt("dev-1"))
        keep_id, keep = update_bytes(1)
        late_id, late = update_bytes(2)
        sender.submit(entry(keep_id, keep))
        late_entry = entry(late_id, late, expires_in=0.3)
        sender.submit(late_entry)
        assert len(outbox) == 2  # stored before any attempt to send
        wait_for(lambda: "cannot reach broker" in device.last_error, WAIT, "the device's first failed connection")
        assert not device.connected.is_set() and len(outbox) == 2  # nothing lost while offline
        # The second one's round ends while the link is down, by the clock the outbox judges expiry with.
        wait_for(lambda: time.time() > late_entry.expires, WAIT, "the late update's deadline to pass")
        with caplog.at_level(logging.WARNING):
            broker.start()
            assert device.wait_connected(WAIT)
            assert inbox.wait_for(1)
            assert outbox.wait_empty(WAIT), "the receipt did not empty the outbox"
        assert list(inbox.by_id) == [keep_id] and inbox.by_id[keep_id] == keep
        assert "dropped expired update round 1" in caplog.text
    finally:
        device.stop()
        gateway.stop()


def test_outbox_survives_a_restart_and_sets_corrupt_entries_aside(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o")
    update_id, payload = update_bytes(3)
    outbox.put(entry(update_id, payload))
    (tmp_path / "o" / "00000000000000000000-zz.msg").write_bytes(b"\xff garbage")
    again = Outbox(tmp_path / "o")
    pending = again.pending()
    assert [e.payload for e in pending] == [payload]
    assert (tmp_path / "o" / "00000000000000000000-zz.corrupt").exists()


def test_last_will_announces_a_dead_device(broker: MosquittoProcess) -> None:
    watcher, seen = watch_presence(broker, TOPICS.all_presence, "watcher")
    death = wire.encode(wire.Presence("dev-9", False, 1, int(time.time())))
    device = start_link(broker, "dev-9", will=Will(TOPICS.presence("dev-9"), death))
    try:
        assert watcher.wait_ready(WAIT)
        assert device.wait_ready(WAIT)
        device._client.socket().close()  # the network dies under the device: no DISCONNECT is sent
        seen.wait_until(lambda got: len(got) > 0, WAIT, "the broker to publish the last will")
        assert seen.items[-1].device == "dev-9" and seen.items[-1].online is False
    finally:
        device.stop()
        watcher.stop()


def test_updates_stored_during_a_flush_are_sent_without_waiting_for_the_timer(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    gateway, inbox, device = gateway_and_device(broker)
    at_gate = threading.Event()
    gate = threading.Event()
    real_publish = device.publish

    def slow_first_publish(*args: object, **kwargs: object) -> bool:
        at_gate.set()
        gate.wait(WAIT)  # the first flush is mid-publish while the others are stored
        return real_publish(*args, **kwargs)  # type: ignore[arg-type]

    device.publish = slow_first_publish  # type: ignore[method-assign]
    try:
        sender = OutboxSender(device, Outbox(tmp_path / "outbox"), TOPICS.receipt("dev-1"), resend_after=3600)
        updates = [update_bytes(i) for i in range(5)]
        sender.submit(entry(*updates[0]))
        assert at_gate.wait(WAIT), "the first flush never reached publish"
        for update_id, payload in updates[1:]:
            sender.submit(entry(update_id, payload))
        gate.set()
        assert inbox.wait_for(5), f"{len(inbox.by_id)} of 5 arrived: a flush request was lost"  # no timer running
    finally:
        device.stop()
        gateway.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_persistent_session_keeps_qos1_messages_while_a_device_is_away(broker: MosquittoProcess, protocol: str) -> None:
    """Both protocol versions: a task published while the device is offline reaches it when it returns."""
    got: list[bytes] = []
    arrived = threading.Event()

    def make() -> MqttLink:
        device = MqttLink(fast_config(broker, protocol=protocol), f"dev-{protocol}")
        device.subscribe(TOPICS.task("dev-1"), lambda t, p: (got.append(p), arrived.set()))
        return device.start()

    device = make()
    assert device.wait_ready(WAIT) and device.protocol == protocol
    device.stop()
    gateway = start_link(broker, "gateway")
    try:
        assert gateway.wait_ready(WAIT)
        assert gateway.publish(TOPICS.task("dev-1"), b"task while away", timeout=WAIT)
        device = make()
        assert arrived.wait(WAIT) and got == [b"task while away"]
        device.stop()
    finally:
        gateway.stop()


def test_unreachable_broker_gives_a_clear_error() -> None:
    from edge_runtime.transport.broker import free_port

    port = free_port()
    lonely = MqttLink(BrokerConfig(url=f"mqtt://127.0.0.1:{port}", backoff_cap=0.2), "dev-x").start()
    try:
        wait_for(lambda: lonely.last_error, WAIT, "the first connection attempt to fail")
        with pytest.raises(TransportError, match=f"cannot reach broker 127.0.0.1:{port}"):
            lonely.require_connected(0)
    finally:
        lonely.stop()
    with pytest.raises(TransportError, match="expected mqtt://"):
        BrokerConfig(url="http://example.invalid").endpoint()


def test_topics_refuse_wildcards_and_parse_devices() -> None:
    assert TOPICS.device_of(TOPICS.update("dev-7")) == "dev-7"
    with pytest.raises(wire.SchemaError):
        TOPICS.update("a/+")
    with pytest.raises(wire.SchemaError):
        TOPICS.device_of("tinyfed/v1/other/device/x/update")
