"""Benchmark ``transport``: what an update costs on the MQTT wire, how fast one device can send, agent memory.

Everything runs against a real Mosquitto on a free loopback port.

- Wire bytes: the device's connection passes through a counting TCP relay,
  so every MQTT byte is seen (fixed header, topic, MQTT 5 properties,
  packet ids, PUBACKs, the gateway's receipts). Connection set-up is
  excluded by resetting the counters once the device is ready. Updates are
  real: one digits-MLP device's delta at 1% and 10% density, and a dense
  float32 update above 64 KiB that travels as fragments.
- Updates per second: one device submits updates through the durable outbox
  (one fsync'd file each) and the gateway stand-in sends receipts; the
  figure counts receipted updates. The baseline in the same run is bare
  paho publishing the same payloads with QoS 1 and waiting for each PUBACK,
  with no outbox and no receipts.
- Agent RSS: ``tinyfed device run`` as its own process, measured after it
  installed the model and delivered one update, against a bare Python that
  imports numpy and paho.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result
from edge_runtime import wire
from edge_runtime.compress import CompressionConfig, Compressor
from edge_runtime.transport.broker import MosquittoProcess, free_port
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.fragments import Reassembler
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink
from edge_runtime.transport.outbox import Outbox, OutboxEntry
from edge_runtime.transport.sender import OutboxSender
from edge_runtime.transport.topics import Topics

TOPICS = Topics("bench")
WAIT = 60.0


class CountingRelay:
    """A loopback TCP relay to the broker that counts bytes each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self._lock:
                    if direction == "up":
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


class Receipts:
    """The gateway side: reassemble, decode, receipt, count."""

    def __init__(self, link: MqttLink, manifest: wire.ModelManifest | None = None) -> None:
        self.link = link
        self.manifest = manifest  # what a compact update (a real agent's default) is read against
        self.reassembler = Reassembler()
        self.count = 0
        self.changed = threading.Condition()
        link.subscribe(TOPICS.all_updates, self._on_update)

    def _on_update(self, topic: str, payload: bytes) -> None:
        whole = self.reassembler.feed(TOPICS.device_of(topic), payload)
        if whole is None:
            return
        device, m = TOPICS.device_of(topic), self.manifest
        update = wire.decode(whole, expect=wire.Update, device=device, spec=m.spec() if m else None,
                             versions=[m.version] if m else [])  # fmt: skip
        self.link.publish(TOPICS.receipt(device), wire.encode(wire.Receipt([update.update_id])))
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count >= count, WAIT)


def real_updates() -> dict[str, bytes]:
    from bench.codec import real_deltas

    deltas, samples = real_deltas("mlp")
    out: dict[str, bytes] = {}
    for label, density in (("1pct", 0.01), ("10pct", 0.1)):
        compressed = Compressor(CompressionConfig(density=density)).compress(deltas)
        update = wire.Update(os.urandom(16), "dev-1", 1, bytes(32), samples, compressed.tensors)
        out[label] = wire.encode(update)
    # A dense float32 update of a 40k-parameter tensor (160 KB): above 64 KiB, so it travels as fragments.
    big = np.random.default_rng(0).standard_normal(40_000).astype(np.float32)
    dense = Compressor(CompressionConfig(density=1.0, value_coding=wire.ValueCoding.FLOAT32)).compress({0: big})
    out["dense_f32"] = wire.encode(wire.Update(os.urandom(16), "dev-1", 1, bytes(32), samples, dense.tensors))
    return out


def _link(url: str, name: str) -> MqttLink:
    return MqttLink(BrokerConfig(url=url, backoff_base=0.05, backoff_cap=0.5), name).start()


def _with_fresh_id(payload: bytes) -> tuple[bytes, bytes]:
    update = wire.decode(payload, expect=wire.Update)
    update.update_id = os.urandom(16)
    return update.update_id, wire.encode(update)


def wire_cost(broker: MosquittoProcess, payload: bytes, count: int, workdir: Path) -> dict[str, float]:
    relay = CountingRelay(broker.port)
    gateway = _link(broker.url, "gateway")
    receipts = Receipts(gateway)
    device = _link(f"mqtt://127.0.0.1:{relay.port}", "dev-1")
    sender = OutboxSender(device, Outbox(workdir / "outbox-wire"), TOPICS.receipt("dev-1"))
    try:
        assert gateway.wait_ready(WAIT) and device.wait_ready(WAIT)
        relay.reset()
        entries = [_with_fresh_id(payload) for _ in range(count)]
        for update_id, data in entries:
            sender.submit(OutboxEntry(update_id, TOPICS.update("dev-1"), data, time.time() + 600))
        assert receipts.wait(count), "updates were not receipted in time"
        deadline = time.monotonic() + WAIT
        while len(sender.outbox) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the last PUBACKs of the receipts
        sent = sum(len(d) for _, d in entries)
        return {
            "payload_bytes": len(payload),
            "up_per_payload_byte": relay.up / sent,
            "total_per_payload_byte": (relay.up + relay.down) / sent,
            "framing_bytes_per_update": (relay.up - sent) / count,
        }
    finally:
        device.stop()
        gateway.stop()
        relay.close()


def throughput(broker: MosquittoProcess, payload: bytes, count: int, workdir: Path) -> dict[str, float]:
    gateway = _link(broker.url, "gateway-rate")
    receipts = Receipts(gateway)
    device = _link(broker.url, "dev-rate")
    sender = OutboxSender(device, Outbox(workdir / "outbox-rate"), TOPICS.receipt("dev-1"))
    try:
        assert gateway.wait_ready(WAIT) and device.wait_ready(WAIT)
        entries = [_with_fresh_id(payload) for _ in range(count)]
        t0 = time.perf_counter()
        for update_id, data in entries:
            sender.submit(OutboxEntry(update_id, TOPICS.update("dev-1"), data, time.time() + 600))
        assert receipts.wait(count), "updates were not receipted in time"
        ours = count / (time.perf_counter() - t0)
        raw = _link(broker.url, "dev-raw")
        try:
            assert raw.wait_ready(WAIT)
            t0 = time.perf_counter()
            for _, data in entries:
                assert raw.publish(TOPICS.update("raw"), data, qos=1, timeout=WAIT)
            bare = count / (time.perf_counter() - t0)
        finally:
            raw.stop()
        return {"updates_per_s": ours, "raw_paho_updates_per_s": bare}
    finally:
        device.stop()
        gateway.stop()


def status_snapshot(pid: int) -> dict[str, float]:
    """Every numeric field of /proc/PID/status, sizes in MiB, from one read: the kernel computes them together,
    so VmHWM >= VmRSS = RssAnon + RssFile + RssShmem holds within one snapshot, not across two reads (RSS counters
    are per-thread caches that lag by a few pages)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) / 1024 if parts[1:] == ["kB"] else float(parts[0])
    return fields


def _status_mib(pid: int, field: str) -> float:
    return status_snapshot(pid).get(field, float("nan"))


def digits_agent_files(
    broker_url: str, workdir: Path, device: str, samples: int, backend: str | None = None
) -> tuple[wire.ModelManifest, list[wire.ModelChunk], Path]:
    """The digits MLP's manifest and chunks, and a device.toml whose data is ``samples`` digits in an NPZ file
    (as on a deployed board: the digits loader would import scikit-learn into the agent being measured)."""
    from edge_runtime.data.sources import load_digits
    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model
    from edge_runtime.train.trainer import Trainer, cut_for_last_layers

    workdir.mkdir(parents=True, exist_ok=True)
    digits = load_digits(0)
    graph = build_model("mlp", digits.train.x, digits.train.classes, seed=0)
    model = write_graph(graph)
    shapes = Trainer(graph, cut=cut_for_last_layers(graph, 1)).trainable_tensors()
    manifest, chunks = make_manifest(model, [wire.TrainableTensor(t, s) for t, s in shapes.items()])
    own = np.random.default_rng(0).permutation(len(digits.train))[:samples]
    data = workdir / "local.npz"
    np.savez(data, x=digits.train.x[own], y=digits.train.y[own])
    config = workdir / "device.toml"
    chosen = f'backend = "{backend}"\n' if backend else ""
    config.write_text(
        f'[device]\nid = "{device}"\nfederation = "bench"\nstorage = "{workdir / "agent"}"\n{chosen}'
        f'[data]\nsource = "{data}"\n[broker]\nurl = "{broker_url}"\n[trust]\nmode = "insecure"\n'
    )
    return manifest, chunks, config


def agent_memory(broker: MosquittoProcess, workdir: Path) -> dict[str, float]:
    manifest, chunks, config = digits_agent_files(broker.url, workdir, "rss", 60)
    gateway = _link(broker.url, "gateway-rss")
    receipts = Receipts(gateway, manifest)
    born = threading.Event()

    def on_presence(topic: str, payload: bytes) -> None:
        caps = wire.decode(payload, expect=wire.Presence).capabilities
        if caps is not None and caps.model_version == manifest.version:
            born.set()

    gateway.subscribe(TOPICS.presence("rss"), on_presence)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfed", "device", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bare = subprocess.Popen(
        [sys.executable, "-c", "import numpy, paho.mqtt.client, sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert gateway.wait_ready(WAIT)
        publish_model(gateway, TOPICS, manifest, chunks)
        assert born.wait(WAIT), "the agent did not install the model"
        task = wire.Task(os.urandom(16), 1, manifest.version, 5, 0.05, 0.01, int(time.time()) + 300)
        gateway.publish(TOPICS.task("rss"), wire.encode(task), timeout=WAIT)
        assert receipts.wait(1), "the agent did not deliver its update"
        time.sleep(0.5)
        status = status_snapshot(proc.pid)
        return {
            "agent_rss_mib": status["VmRSS"],
            "agent_peak_rss_mib": status["VmHWM"],
            "bare_python_numpy_paho_rss_mib": _status_mib(bare.pid, "VmRSS"),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        bare.kill()
        gateway.stop()


def main(full: bool = False) -> dict[str, float]:
    count = 200 if full else 50
    updates = real_updates()
    details: dict[str, Any] = {"updates": {}, "count": count}
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess(workdir=Path(tmp) / "broker") as broker:
        for label, payload in updates.items():
            details["updates"][label] = wire_cost(broker, payload, min(count, 20), Path(tmp) / label)
        details["throughput_1pct"] = throughput(broker, updates["1pct"], count * 4, Path(tmp))
        details["memory"] = agent_memory(broker, Path(tmp))
    one = details["updates"]["1pct"]
    rate = details["throughput_1pct"]
    memory = details["memory"]
    figures = {
        "wire_bytes_per_payload_byte": one["up_per_payload_byte"],
        "wire_bytes_per_payload_byte_with_acks": one["total_per_payload_byte"],
        "wire_bytes_per_payload_byte_10pct": details["updates"]["10pct"]["up_per_payload_byte"],
        "wire_bytes_per_payload_byte_fragmented": details["updates"]["dense_f32"]["up_per_payload_byte"],
        "update_bytes_1pct": float(one["payload_bytes"]),
        "updates_per_s": rate["updates_per_s"],
        "updates_per_s_ratio_vs_raw_paho": rate["updates_per_s"] / rate["raw_paho_updates_per_s"],
        "agent_rss_mib": memory["agent_rss_mib"],
        "agent_rss_ratio_vs_bare_python": memory["agent_rss_mib"] / memory["bare_python_numpy_paho_rss_mib"],
    }
    details["note"] = "wire bytes count MQTT only (not TCP/IP headers); upstream unless 'with_acks'"
    path = write_result("transport", figures, details)
    print_table("transport", figures)
    print(f"wrote {path}")
    return {k: float(np.float64(v)) for k, v in figures.items()}
