"""The demo's pure-Python broker (amqtt) with our MQTT link: what works, and the fallback that makes it work."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from edge_runtime.transport.embedded import EmbeddedBroker
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink, Will
from tests.helpers import wait_for

pytest.importorskip("amqtt")
WAIT = 20.0


@pytest.fixture
def embedded() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


def _link(url: str, name: str, protocol: str, **kwargs: object) -> MqttLink:
    config = BrokerConfig(url=url, protocol=protocol, backoff_base=0.05, backoff_cap=0.3, connack_timeout=2.0)
    return MqttLink(config, name, **kwargs)  # type: ignore[arg-type]


def test_auto_falls_back_to_311_and_carries_retained_and_large_messages(embedded: EmbeddedBroker) -> None:
    got: dict[str, bytes] = {}
    arrived = threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        got[topic] = payload
        if len(got) == 2:
            arrived.set()

    publisher = _link(embedded.url, "pub", "auto").start()
    subscriber = _link(embedded.url, "sub", "auto")
    try:
        assert publisher.wait_ready(WAIT) and publisher.protocol == "3.1.1"
        big = bytes(range(256)) * 400  # 100 KiB: above the 64 KiB chunk size
        assert publisher.publish("t/retained", big, retain=True, timeout=WAIT)
        subscriber.subscribe("t/#", on_message)
        subscriber.start()
        assert subscriber.wait_ready(WAIT)
        assert publisher.publish("t/live", b"hello", timeout=WAIT)
        assert arrived.wait(WAIT)
        assert got == {"t/retained": big, "t/live": b"hello"}
    finally:
        publisher.stop()
        subscriber.stop()


def test_mqtt5_only_is_refused_and_the_last_will_works_on_311(embedded: EmbeddedBroker) -> None:
    v5 = _link(embedded.url, "v5", "5").start()
    try:
        # amqtt neither answers an MQTT 5 CONNECT nor closes: the link's CONNACK watchdog has to give up on it.
        wait_for(lambda: "no CONNACK" in v5.last_error, WAIT, "the link to give up on the unanswered MQTT 5 CONNECT")
        assert not v5.connected.is_set()
    finally:
        v5.stop()
    wills: list[bytes] = []
    got = threading.Event()
    watcher = _link(embedded.url, "watch", "3.1.1")
    watcher.subscribe("dev/presence", lambda t, p: (wills.append(p), got.set()))
    watcher.start()
    dying = _link(embedded.url, "dying", "3.1.1", will=Will("dev/presence", b"dead", retain=False)).start()
    try:
        assert watcher.wait_ready(WAIT) and dying.wait_ready(WAIT)
        dying._client.socket().close()  # an abrupt loss, not a DISCONNECT: the broker must send the will
        assert got.wait(WAIT) and wills == [b"dead"]
    finally:
        dying.stop()
        watcher.stop()
