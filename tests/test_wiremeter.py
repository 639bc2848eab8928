"""The wire meter (tinyfed/wiremeter.py) between a real MQTT link and a real Mosquitto: what it forwards arrives
untouched, and what it counts is every byte both ways, split by MQTT packet kind."""

from __future__ import annotations

import threading

from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import MqttLink
from tests.helpers import fast_config, start_link, wait_for
from tinyfed.wiremeter import WireMeter

WAIT = 30.0
TASK = "tinyfed/v1/meter/device/d1/task"
UPDATE = "tinyfed/v1/meter/device/d1/update"


def test_the_meter_forwards_untouched_and_counts_each_packet_kind_both_ways(broker: MosquittoProcess) -> None:
    got: list[bytes] = []
    arrived = threading.Event()
    with WireMeter("127.0.0.1", broker.port) as meter:
        metered = MqttLink(fast_config(broker, url=meter.url("mqtt")), "metered")
        metered.subscribe(TASK, lambda topic, payload: (got.append(payload), arrived.set()))
        metered.start()
        direct = start_link(broker, "direct")
        try:
            assert metered.wait_ready(WAIT) and direct.wait_ready(WAIT)
            before = meter.snapshot()
            task = bytes(range(256)) * 4
            assert direct.publish(TASK, task, timeout=WAIT)
            assert arrived.wait(WAIT)
            assert metered.publish(UPDATE, b"u" * 500, timeout=WAIT)
            wait_for(lambda: meter.snapshot().kinds.get("PUBACK", [0, 0])[1] > before.kinds.get("PUBACK", [0, 0])[1],
                     WAIT, "the broker's PUBACK of the update")  # fmt: skip
            d = meter.snapshot().minus(before)
        finally:
            metered.stop()
            direct.stop()
    assert got == [task]
    # A QoS 1 PUBLISH: fixed header (1 + 2 length bytes), topic (2 + len), packet id (2), properties, payload.
    update_up = d.kinds["PUBLISH update"][0]
    assert 500 + len(UPDATE) + 7 <= update_up <= 500 + len(UPDATE) + 12
    task_down = d.kinds["PUBLISH task"][1]
    assert 1024 + len(TASK) + 7 <= task_down <= 1024 + len(TASK) + 12
    assert d.up == sum(v[0] for v in d.kinds.values()) and d.down == sum(v[1] for v in d.kinds.values())
    # Ours for the task (paho leaves out a success reason code), the broker's for the update (Mosquitto writes it).
    assert d.kinds["PUBACK"] == [4, 5]


def test_a_client_that_stops_reading_does_not_hold_up_the_others(broker: MosquittoProcess) -> None:
    """One metered client whose network thread is stuck (its handler blocks) while megabytes are sent to it: the
    meter keeps its backlog for it alone, and another metered client's messages still go both ways."""
    stuck, release = threading.Event(), threading.Event()
    arrived = threading.Event()
    with WireMeter("127.0.0.1", broker.port) as meter:
        slow = MqttLink(fast_config(broker, url=meter.url("mqtt")), "slow")
        slow.subscribe(TASK, lambda topic, payload: (stuck.set(), release.wait()))
        slow.start()
        other = MqttLink(fast_config(broker, url=meter.url("mqtt")), "other")
        other.subscribe(UPDATE, lambda topic, payload: arrived.set())
        other.start()
        direct = start_link(broker, "direct")
        try:
            assert slow.wait_ready(WAIT) and other.wait_ready(WAIT) and direct.wait_ready(WAIT)
            assert direct.publish(TASK, b"first", timeout=WAIT)
            assert stuck.wait(WAIT)
            for _ in range(24):  # far more than the loopback socket buffers hold
                assert direct.publish(TASK, b"x" * (1 << 20), timeout=WAIT)
            assert other.publish(UPDATE, b"still moving", timeout=WAIT)
            assert arrived.wait(WAIT)
        finally:
            release.set()
            for link in (slow, other, direct):
                link.stop()
