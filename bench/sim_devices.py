"""Many simulated devices in one process, each a real MQTT client, for the ``round_scale`` benchmark.

``python -m bench.sim_devices --broker HOST:PORT --federation F --first 0 --count 2500``

Each client does what a device does on the wire, and nothing else: it
announces itself with a retained birth message and a last will, reads
the retained manifest, and answers every task with a real encoded sparse
update (1% of the manifest's trainable entries, int8 values, made once
per process by the real compressor from a random delta). No training and
no interpreter: the benchmark measures the gateway and the broker, not
the devices. Every client's socket is served by one thread (a selector
over paho's external-loop calls): a thread per client, as ``loop_start``
makes, would spend the process's time switching among 2,500 threads.
Prints ``ready N`` once every client is connected, and runs until its
standard input closes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import sys
import threading
import time
from typing import Any

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
        self.connected = 0
        self._tensors: list[wire.TensorUpdate] | None = None
        self.answered = 0
        self.selector = selectors.DefaultSelector()
        self._stop = threading.Event()

    def _presence(self, name: str, online: bool) -> bytes:
        caps = wire.Capabilities(ram=512 << 20, backend="sim", trainable_layers=0, samples=100) if online else None
        return wire.encode(wire.Presence(name, online, 1, int(time.time()), caps))

    # -- the one network thread ------------------------------------------------------------------------------
    def _watch(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _unwatch(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _done_writing(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(sock, selectors.EVENT_READ, client)

    def start(self) -> None:
        for name in self.names:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tinyfed-{name}", protocol=mqtt.MQTTv5)
            client.will_set(self.topics.presence(name), self._presence(name, False), qos=1, retain=True)
            client.user_data_set(name)
            client.on_connect = self._on_connect
            client.on_message = self._on_message
            client.on_socket_open = self._watch
            client.on_socket_close = self._unwatch
            client.on_socket_register_write = self._want_write
            client.on_socket_unregister_write = self._done_writing
            client.max_queued_messages_set(0)
            client.connect(self.host, self.port, keepalive=600)
            self.clients[name] = client

    def serve(self, until: threading.Event | None = None) -> None:
        """Serve every client's socket until ``until`` (or stop) is set."""
        last_misc = time.monotonic()
        while not self._stop.is_set() and not (until is not None and until.is_set()):
            for key, events in self.selector.select(timeout=0.5):
                client: mqtt.Client = key.data
                if events & selectors.EVENT_READ:
                    client.loop_read()
                if events & selectors.EVENT_WRITE:
                    client.loop_write()
            now = time.monotonic()
            if now - last_misc >= 1.0:  # keepalives and retries, once a second for all
                last_misc = now
                for client in self.clients.values():
                    client.loop_misc()

    def _on_connect(self, client: mqtt.Client, name: str, flags: object, reason: object, props: object) -> None:
        client.subscribe([(self.topics.task(name), 1), (self.topics.manifest, 1)])
        client.publish(self.topics.presence(name), self._presence(name, True), qos=1, retain=True)
        self.connected += 1

    def _on_message(self, client: mqtt.Client, name: str, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.manifest:
            manifest = wire.decode(bytes(message.payload), expect=wire.ModelManifest)
            self._make_update_body(manifest)
            return
        task = wire.decode(bytes(message.payload), expect=wire.Task)
        tensors = [] if task.evaluate_only else (self._tensors or [])
        metrics = {"eval_accuracy": 0.5, "eval_samples": 20.0} if task.evaluate_only else {}
        update = wire.Update(os.urandom(16), name, task.round, task.base_version, 100, tensors, metrics)
        client.publish(self.topics.update(name), wire.encode(update), qos=1)
        self.answered += 1

    def _make_update_body(self, manifest: wire.ModelManifest) -> None:
        if self._tensors is not None:
            return
        rng = np.random.default_rng(0)
        deltas = {t: rng.normal(0, 0.01, n).astype(np.float32) for t, n in manifest.spec().items()}
        self._tensors = Compressor(CompressionConfig(density=0.01)).compress(deltas).tensors

    def stop(self) -> None:
        self._stop.set()
        for client in self.clients.values():
            try:
                client.disconnect()
                client.loop_write()
            except OSError:
                pass


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
    deadline = time.monotonic() + 300
    server = threading.Thread(target=fleet.serve, daemon=True)
    server.start()
    while fleet.connected < len(fleet.names):
        if time.monotonic() > deadline or not server.is_alive():
            print(f"only {fleet.connected} of {len(fleet.names)} clients connected", file=sys.stderr, flush=True)
            return 1
        time.sleep(0.05)
    print(f"ready {len(fleet.names)}", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    fleet._stop.set()
    server.join(timeout=10)
    fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
