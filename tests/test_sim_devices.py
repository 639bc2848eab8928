"""The round_scale benchmark's simulated devices: hand-encoded MQTT that a broker, paho and a real gateway accept.

The simulator is a load generator, so what must hold is that it does on the wire what a device does: a
retained birth and a last will another MQTT client sees, and real rounds of a real ``tinyfed gateway run``
through Mosquitto, each update counted in the gateway's store.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import round_scale
from bench.sim_devices import SimulatedFleet, parse_publish, publish_packet, split_packets, varint
from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.topics import Topics
from gateway.store import GatewayStore
from tests.helpers import Recorder


def test_split_packets_reassembles_packets_cut_anywhere() -> None:
    big = publish_packet("t/a", bytes(range(256)) * 3, packet_id=7)  # a two-byte remaining length
    small = publish_packet("t/b", b"x", packet_id=8)
    stream = big + small + b"\x40\x02\x00\x07"
    buffer, got = bytearray(), []
    for byte in stream:  # one byte at a time: every cut point
        buffer.append(byte)
        got += split_packets(buffer)
    assert not buffer
    assert [first >> 4 for first, _ in got] == [3, 3, 4]
    assert parse_publish(*got[0]) == ("t/a", 7, bytes(range(256)) * 3)
    assert parse_publish(*got[1]) == ("t/b", 8, b"x")
    assert varint(321) == b"\xc1\x02"


def test_births_and_wills_reach_a_paho_client(broker: MosquittoProcess) -> None:
    """A paho subscriber sees each device's retained birth (with capabilities), and its will once its
    connection drops without a DISCONNECT."""
    topics = Topics("simfed")
    seen: Recorder[wire.Presence] = Recorder()
    subscribed = threading.Event()
    observer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv5)
    observer.on_message = lambda c, u, m: seen.append(wire.decode(bytes(m.payload), expect=wire.Presence))
    observer.on_subscribe = lambda *args: subscribed.set()
    observer.connect("127.0.0.1", broker.port)
    observer.loop_start()
    try:
        observer.subscribe(f"{topics.base}/device/+/presence", qos=1)
        assert subscribed.wait(30), "no SUBACK for the observer"
        fleet = SimulatedFleet("127.0.0.1", broker.port, "simfed", 0, 3)
        fleet.connect_all(timeout=60)
        seen.wait_until(lambda got: len(got) >= 3, 30, "three births")
        births = {p.device: p for p in seen.items[:3]}
        assert set(births) == {"sim-00000", "sim-00001", "sim-00002"}
        assert all(p.online and p.capabilities is not None and p.capabilities.samples == 100 for p in births.values())
        dropped = fleet.connections["sim-00001"]
        fleet.loop.close(dropped, goodbye=False)  # no DISCONNECT: the broker publishes the will
        seen.wait_until(lambda got: any(not p.online for p in got), 30, "the dropped device's will")
        deaths = [p for p in seen.items if not p.online]
        assert [p.device for p in deaths] == ["sim-00001"]
        del fleet.connections["sim-00001"]
        fleet.stop()
    finally:
        observer.loop_stop()
        observer.disconnect()


def test_fifty_simulated_devices_complete_real_gateway_rounds(tmp_path: Path) -> None:
    """The benchmark's own run: a real ``tinyfed gateway run`` and Mosquitto, 50 simulated devices in two
    processes; every training round closes with all 50 updates counted in the gateway's store, the final
    evaluation gets every device's report, and both floors' hubs (the skeleton and paho) get an update from each
    device and every receipt they send arrives."""
    run = round_scale.run_size(50, tmp_path / "run", "after", floor=True)
    asked = round_scale.rounds_for(50)
    store = GatewayStore(tmp_path / "run" / "gw" / "gateway.db")
    try:
        rows = store.rounds()
        training = [r for r in rows if r.mode == "sync"]
        assert len(training) == asked
        assert all(r.status == "closed" for r in training)
        assert [store.round_counts(r.round)["train"] for r in training] == [50] * asked
        evaluation = [r for r in rows if r.mode == "eval"]
        assert len(evaluation) == 1 and store.round_counts(evaluation[0].round)["eval"] == 50
    finally:
        store.close()
    answered = [int(line.split()[2]) for line in run["simulators"]]
    receipts = [int(line.split()[4]) for line in run["simulators"]]
    # The gateway's rounds and evaluation, then the skeleton hub's rounds and the paho floor's.
    tasks = 50 * (asked + 1) + 2 * 50 * asked
    assert sum(answered) == tasks
    # Every one of the gateway's updates receipted, the evaluation's reports too, as the devices counted them
    # (each simulator waits for every answer's receipt, or 5 s of silence, before it says); and every one of
    # the floors' (the skeleton hub reads until the broker closes, the paho floor waits for its queue).
    assert run["receipts_missing"] == 0 and run["floor_receipts_missing"] == 0
    assert sum(receipts) == tasks
    assert run["floor"] is not None and len(run["floor"]["rounds_seconds"]) == asked
    assert run["floor"]["paho_hub_cpu_ms_per_update"] > 0 and run["floor"]["paho_seconds_per_round"] > 0
