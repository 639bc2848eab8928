"""Many simulated devices in one process, each a real MQTT client, for the ``round_scale`` benchmark.

``python -m bench.sim_devices --broker URL --federation F --first 0 --count 250``

Each client does what a device does on the wire, and nothing else: it
announces itself with a retained birth message and a last will, reads
the retained manifest, and answers every task with a real encoded sparse
update (1% of the manifest's trainable entries, int8 values, made once
per process by the real compressor from a random delta). No training and
no interpreter: the benchmark measures the gateway and the broker, not
the devices. Prints ``ready N`` once every client is connected, and runs
until its standard input closes.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime import wire
from edge_runtime.compress.compressor import CompressionConfig, Compressor
from edge_runtime.transport.topics import Topics


class SimulatedFleet:
    def __init__(self, host: str, port: int, federation: str, first: int, count: int) -> None:
        self.topics = Topics(federation)
        self.host, self.port = host, port
        self.names = [f"sim-{i:05d}" for i in range(first, first + count)]
        self.clients: dict[str, mqtt.Client] = {}
        self.connected = threading.Semaphore(0)
        self._tensors: list[wire.TensorUpdate] | None = None
        self._lock = threading.Lock()
        self.answered = 0

    def _presence(self, name: str, online: bool) -> bytes:
        caps = wire.Capabilities(ram=512 << 20, backend="sim", trainable_layers=0, samples=100) if online else None
        return wire.encode(wire.Presence(name, online, 1, int(time.time()), caps))

    def start(self) -> None:
        for name in self.names:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tinyfed-{name}", protocol=mqtt.MQTTv5)
            client.will_set(self.topics.presence(name), self._presence(name, False), qos=1, retain=True)
            client.user_data_set(name)
            client.on_connect = self._on_connect
            client.on_message = self._on_message
            client.connect(self.host, self.port, keepalive=60)
            client.loop_start()
            self.clients[name] = client

    def _on_connect(self, client: mqtt.Client, name: str, flags: object, reason: object, props: object) -> None:
        client.subscribe([(self.topics.task(name), 1), (self.topics.manifest, 1)])
        client.publish(self.topics.presence(name), self._presence(name, True), qos=1, retain=True)
        self.connected.release()

    def _on_message(self, client: mqtt.Client, name: str, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.manifest:
            manifest = wire.decode(bytes(message.payload), expect=wire.ModelManifest)
            self._make_update_body(manifest)
            return
        task = wire.decode(bytes(message.payload), expect=wire.Task)
        with self._lock:
            tensors = [] if task.evaluate_only else (self._tensors or [])
        metrics = {"eval_accuracy": 0.5, "eval_samples": 20.0} if task.evaluate_only else {}
        update = wire.Update(os.urandom(16), name, task.round, task.base_version, 100, tensors, metrics)
        client.publish(self.topics.update(name), wire.encode(update), qos=1)
        self.answered += 1

    def _make_update_body(self, manifest: wire.ModelManifest) -> None:
        with self._lock:
            if self._tensors is not None:
                return
            rng = np.random.default_rng(0)
            deltas = {t: rng.normal(0, 0.01, n).astype(np.float32) for t, n in manifest.spec().items()}
            self._tensors = Compressor(CompressionConfig(density=0.01)).compress(deltas).tensors

    def stop(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True, help="host:port on loopback")
    parser.add_argument("--federation", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    host, _, port = args.broker.rpartition(":")
    fleet = SimulatedFleet(host, int(port), args.federation, args.first, args.count)
    fleet.start()
    for _ in fleet.names:
        if not fleet.connected.acquire(timeout=120):
            print("not all clients connected", file=sys.stderr, flush=True)
            return 1
    print(f"ready {len(fleet.names)}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
