"""Thousands of simulated devices in one process, each with its own MQTT connection, for ``round_scale``.

``python -m bench.sim_devices --broker HOST:PORT --federation F --first 0 --count 5000``

Why MQTT is encoded here by hand, not with paho: this is a load generator,
not the system under test. With one paho client per device, a simulated
device cost about 1 ms of Python per message (paho's packet objects,
locks, callbacks, its per-client loop calls), so 10,000 devices in two
processes took longer to answer a round than the gateway took to run it,
and ``round_scale`` measured paho's per-client machinery instead of the
hub. Here every packet a device sends is built once (CONNECT with its will,
SUBSCRIBE, the retained birth) or from a template made once per task shape
(the update: only the device name and the update id change), and every
socket is served by one non-blocking ``selectors`` loop. The bytes on the
wire are what paho would send for the same calls (MQTT 5, QoS 1).

What each device does on the wire, as ``tinyfed device run`` does:

- CONNECT with a last will (its death: a retained QoS 1 Presence);
- SUBSCRIBE to its task and receipt topics and to the retained manifest
  (QoS 1), then PUBLISH its birth (retained, QoS 1, with capabilities);
- PUBACK every QoS 1 message it receives (tasks, manifests, receipts);
- answer every task with an Update PUBLISH at QoS 1 (PUBACKed by the
  broker): a real sparse update in the compact layout devices send by
  default (``[transport] update_format``), 1% of the manifest's trainable
  entries as int8 values made once per process by the real compressor from
  a random delta, with the task's round and base version; an evaluation
  task is answered with an empty update carrying evaluation metrics.

It does not train, verify or install models, claim its client id, or send
keepalives (keepalive 0): the benchmark measures the gateway and the broker.
Prints ``ready N`` once every device is connected, subscribed and its birth
acknowledged, and runs until its standard input closes; then prints one
``stats`` line (tasks answered, receipts, manifests seen).

``SkeletonHub`` is the floor's hub on the same codec: one connection that
sends the same tasks and a receipt per update, without tinyfed.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_runtime import wire
from edge_runtime.compress.compressor import CompressionConfig, Compressor
from edge_runtime.transport.topics import Topics, member_client_id
from edge_runtime.wire.compact import ID_BYTES, _leb128, new_update_id

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14
IN_FLIGHT_CONNECTS = 64  # connections opened but not yet answered: keeps the broker's listen backlog short
SIM_NAME_WIDTH = 5  # sim-00000: every name the same length


# -- MQTT 5 packets, by hand ----------------------------------------------------------------------------------
# MQTT's variable byte integer is unsigned LEB128, which the compact update codec already writes.
varint = _leb128


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_packet(client_id: str, will_topic: str, will_payload: bytes) -> bytes:
    """Clean start, no session kept, keepalive 0, a retained QoS 1 will."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean start, will, will QoS 1, will retain
    variable = utf8("MQTT") + bytes([5, flags]) + (0).to_bytes(2, "big") + varint(0)
    payload = utf8(client_id) + varint(0) + utf8(will_topic) + len(will_payload).to_bytes(2, "big") + will_payload
    return packet(CONNECT << 4, variable + payload)


def subscribe_packet(packet_id: int, topics: Iterable[str], qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + varint(0) + b"".join(utf8(t) + bytes([qos]) for t in topics)
    return packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(topic: str, payload: bytes, packet_id: int = 0, qos: int = 1, retain: bool = False) -> bytes:
    head = utf8(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + varint(0)
    return packet((PUBLISH << 4) | (qos << 1) | int(retain), head + payload)


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole packet off the front of ``buffer``: (first byte, body)."""
    out: list[tuple[int, bytes]] = []
    at, size = 0, len(buffer)
    while at + 2 <= size:
        length, shift, i = 0, 0, at + 1
        while True:
            if i >= size:
                del buffer[:at]
                return out
            byte = buffer[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
            if shift > 21:
                raise ValueError("malformed MQTT remaining length")
        if i + length > size:
            break
        out.append((buffer[at], bytes(buffer[i : i + length])))
        at = i + length
    del buffer[:at]
    return out


def parse_publish(first: int, body: bytes) -> tuple[str, int, bytes]:
    """A PUBLISH body (MQTT 5): topic, packet id (0 at QoS 0), payload."""
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + n].decode()
    at = 2 + n
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[at : at + 2], "big")
        at += 2
    props, shift = 0, 0
    while True:  # property length (varint), then the properties, skipped
        byte = body[at]
        at += 1
        props |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return topic, packet_id, body[at + props :]


# -- one connection --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Connection:
    """A socket with its unparsed input and unsent output, served by a ``selectors`` loop."""

    name: str
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    next_id: int = 1
    connacked: bool = False
    subacked: bool = False
    born: bool = False
    birth_id: int = 0

    def packet_id(self) -> int:
        value = self.next_id
        self.next_id = value % 65535 + 1
        return value


class Loop:
    """One ``selectors`` loop over many non-blocking sockets."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def open(self, host: str, port: int, name: str) -> Connection:
        sock = socket.create_connection((host, port), timeout=30)  # loopback: done at once, or the backlog is full
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = Connection(name, sock)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def send(self, conn: Connection, data: bytes) -> None:
        if conn.outbox:
            conn.outbox += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            conn.outbox += data[sent:]
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        del conn.outbox[:sent]
        if not conn.outbox:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def poll(self, timeout: float, on_packet: Callable[[Connection, int, bytes], None]) -> int:
        """Serve what is ready within ``timeout``; returns how many sockets were."""
        ready = self.selector.select(timeout)
        for key, events in ready:
            conn = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ:
                try:
                    data = conn.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError as exc:
                    raise ConnectionError(f"{conn.name}: the broker closed the connection ({exc})") from exc
                if not data:
                    raise ConnectionError(f"{conn.name}: the broker closed the connection")
                conn.inbox += data
                for first, body in split_packets(conn.inbox):
                    on_packet(conn, first, body)
        return len(ready)

    def close(self, conn: Connection, goodbye: bool = True, linger: bool = False) -> None:
        try:
            if goodbye:  # what is still unsent first, then a clean DISCONNECT: the broker drops the will
                conn.sock.setblocking(True)
                conn.sock.sendall(bytes(conn.outbox) + b"\xe0\x00")
            if goodbye and linger:
                # Then read until the broker closes: a socket closed with unread bytes (the broker's PUBACKs)
                # answers with a reset, and a reset makes the broker drop what it had not yet read of ours. The
                # skeleton hub lost the last receipts of a round that way (3,057 of 30,000 at 10,000 devices).
                # Devices have nothing left in flight when they stop: only the hub lingers.
                conn.sock.shutdown(socket.SHUT_WR)
                conn.sock.settimeout(30.0)
                while conn.sock.recv(1 << 16):
                    pass
        except OSError:
            pass
        self.selector.unregister(conn.sock)
        conn.sock.close()


# The floor's tasks are rounds 101 and up, and its receipts this one payload (an id no device sends): the
# simulators count the gateway's answers and receipts apart from the floor's.
FLOOR_FIRST_ROUND = 101
FLOOR_RECEIPT = wire.encode(wire.Receipt([bytes(16)]))


# -- the simulated fleet ----------------------------------------------------------------------------------------
def sim_name(index: int) -> str:
    return f"sim-{index:0{SIM_NAME_WIDTH}d}"


class UpdateTemplate:
    """One task shape's update in the compact layout (devices' default, ``[transport] update_format``), encoded
    once; each device's copy differs only in its 8 random id bytes (the device is its topic's)."""

    def __init__(self, task: wire.Task, tensors: list[wire.TensorUpdate], spec: dict[int, int]) -> None:
        body = tensors if not task.evaluate_only else []
        metrics = {"eval_accuracy": 0.5, "eval_samples": 20.0} if task.evaluate_only else {}
        update = wire.Update(new_update_id(), "sim", task.round, task.base_version, 100, body, metrics)
        self.raw = wire.encode_compact(update, spec)

    def fill(self) -> bytes:
        return self.raw[:1] + os.urandom(ID_BYTES) + self.raw[1 + ID_BYTES :]


class SimulatedFleet:
    """Devices ``first`` .. ``first + count - 1`` of a federation, on one ``Loop``."""

    def __init__(self, host: str, port: int, federation: str, first: int, count: int) -> None:
        if first + count > 10**SIM_NAME_WIDTH:
            raise ValueError(f"at most {10**SIM_NAME_WIDTH} simulated devices")
        self.host, self.port = host, port
        self.federation = federation
        self.topics = Topics(federation)
        self.names = [sim_name(i) for i in range(first, first + count)]
        self.loop = Loop()
        self.connections: dict[str, Connection] = {}
        self.task_topics = {self.topics.task(n): n for n in self.names}
        self.receipt_topics = {self.topics.receipt(n) for n in self.names}
        self.connected = self.subscribed = self.born = 0
        self.answered = self.receipts = self.manifests = 0
        self.floor_answered = self.floor_receipts = 0  # of those, the skeleton hub's (the floor's)
        self._tensors: list[wire.TensorUpdate] | None = None
        self._spec: dict[int, int] = {}
        self._templates: dict[tuple[int, bytes, bool], UpdateTemplate] = {}

    def _presence(self, name: str, online: bool) -> bytes:
        caps = wire.Capabilities(ram=512 << 20, backend="sim", trainable_layers=0, samples=100) if online else None
        return wire.encode(wire.Presence(name, online, 1, int(time.time()), caps))

    # -- set-up -------------------------------------------------------------------------------------------------
    def _open(self, name: str) -> None:
        conn = self.loop.open(self.host, self.port, name)
        self.connections[name] = conn
        will = connect_packet(member_client_id(self.federation, name), self.topics.presence(name),
                              self._presence(name, False))  # fmt: skip
        self.loop.send(conn, will)

    def connect_all(self, timeout: float = 300.0) -> None:
        """Open every connection (a bounded number unanswered at a time), subscribe, and publish every birth."""
        pending = iter(self.names)
        opened = 0
        deadline = time.monotonic() + timeout
        while self.born < len(self.names):
            while opened < len(self.names) and opened - self.connected < IN_FLIGHT_CONNECTS:
                self._open(next(pending))
                opened += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.born} of {len(self.names)} simulated devices connected and born in "
                                   f"{timeout:.0f} s")  # fmt: skip
            self.loop.poll(0.5, self._on_packet)

    # -- packets ------------------------------------------------------------------------------------------------
    def _on_packet(self, conn: Connection, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            topic, packet_id, payload = parse_publish(first, body)
            if packet_id:
                self.loop.send(conn, puback_packet(packet_id))
            self._on_message(conn, topic, payload)
        elif kind == PUBACK:
            if not conn.born and int.from_bytes(body[:2], "big") == conn.birth_id:
                conn.born = True
                self.born += 1
        elif kind == CONNACK:
            if len(body) < 2 or body[1] != 0:
                raise ConnectionError(f"{conn.name}: the broker refused the connection (reason {body[1:2].hex()})")
            conn.connacked = True
            self.connected += 1
            name = conn.name
            topics = (self.topics.task(name), self.topics.receipt(name), self.topics.manifest)
            self.loop.send(conn, subscribe_packet(conn.packet_id(), topics))
            conn.birth_id = conn.packet_id()
            self.loop.send(conn, publish_packet(self.topics.presence(name), self._presence(name, True),
                                                conn.birth_id, retain=True))  # fmt: skip
        elif kind == SUBACK:
            if any(code >= 0x80 for code in body[3:]):
                raise ConnectionError(f"{conn.name}: the broker refused a subscription ({body[3:].hex()})")
            conn.subacked = True
            self.subscribed += 1

    def _on_message(self, conn: Connection, topic: str, payload: bytes) -> None:
        name = self.task_topics.get(topic)
        if name is not None:
            self._answer(conn, name, payload)
        elif topic in self.receipt_topics:
            self.receipts += 1
            self.floor_receipts += payload == FLOOR_RECEIPT
        elif topic == self.topics.manifest:
            self.manifests += 1
            if self._tensors is None:
                self._make_update_body(wire.decode(payload, expect=wire.ModelManifest))

    def _answer(self, conn: Connection, name: str, payload: bytes) -> None:
        task = wire.decode(payload, expect=wire.Task)
        if self._tensors is None:
            raise RuntimeError(f"{name} got a task before any manifest (the manifest is retained)")
        shape = (task.round, task.base_version, task.evaluate_only)
        template = self._templates.get(shape)
        if template is None:
            template = self._templates[shape] = UpdateTemplate(task, self._tensors, self._spec)
        update = publish_packet(self.topics.update(name), template.fill(), conn.packet_id())
        self.loop.send(conn, update)
        self.answered += 1
        self.floor_answered += task.round >= FLOOR_FIRST_ROUND

    def _make_update_body(self, manifest: wire.ModelManifest) -> None:
        rng = np.random.default_rng(0)
        self._spec = dict(manifest.spec())
        deltas = {t: rng.normal(0, 0.01, n).astype(np.float32) for t, n in self._spec.items()}
        self._tensors = Compressor(CompressionConfig(density=0.01)).compress(deltas).tensors

    # -- running ------------------------------------------------------------------------------------------------
    def serve(self, until: Callable[[], bool]) -> None:
        while not until():
            self.loop.poll(0.5, self._on_packet)

    def stop(self) -> None:
        for conn in self.connections.values():
            self.loop.close(conn)


class SkeletonHub:
    """The floor: the same MQTT messages a gateway's round moves (a task to each device, a receipt for each
    update), on one connection with the fleet's codec and nothing of tinyfed in between."""

    def __init__(self, host: str, port: int, federation: str) -> None:
        self.topics = Topics(federation)
        self.loop = Loop()
        self.conn = self.loop.open(host, port, "floor-hub")
        self.loop.send(self.conn, connect_packet("floor-hub", self.topics.gateway_presence, b""))
        self.updates = 0
        self.ready = False
        self.receipt = FLOOR_RECEIPT  # a receipt's size; devices count it apart from the gateway's
        self.loop.send(self.conn, subscribe_packet(self.conn.packet_id(), [self.topics.all_updates]))
        while not self.ready:
            self.loop.poll(0.5, self._on_packet)

    def _on_packet(self, conn: Connection, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == SUBACK:
            self.ready = True
        elif kind == CONNACK and (len(body) < 2 or body[1] != 0):
            raise ConnectionError(f"the broker refused the floor's hub (reason {body[1:2].hex()})")
        elif kind == PUBLISH:
            topic, packet_id, _ = parse_publish(first, body)
            if packet_id:
                self.loop.send(conn, puback_packet(packet_id))
            self.updates += 1
            device = self.topics.device_of(topic)
            self.loop.send(conn, publish_packet(self.topics.receipt(device), self.receipt, conn.packet_id()))

    def round(self, names: list[str], task: bytes) -> float:
        """Send ``task`` to every device and wait for an update from each; returns the seconds it took."""
        start = time.perf_counter()
        target = self.updates + len(names)
        out = bytearray()
        for name in names:
            out += publish_packet(self.topics.task(name), task, self.conn.packet_id())
            if len(out) > 1 << 16:
                self.loop.send(self.conn, bytes(out))
                out.clear()
                self.loop.poll(0, self._on_packet)
        self.loop.send(self.conn, bytes(out))
        while self.updates < target:
            self.loop.poll(0.5, self._on_packet)
        return time.perf_counter() - start

    def close(self) -> None:
        self.loop.close(self.conn, linger=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True, help="host:port on loopback")
    parser.add_argument("--federation", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    host, _, port = args.broker.rpartition(":")
    fleet = SimulatedFleet(host, int(port), args.federation, args.first, args.count)
    try:
        fleet.connect_all()
    except (OSError, TimeoutError) as exc:
        print(f"simulated devices did not connect: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"ready {len(fleet.names)}", flush=True)
    stdin = selectors.DefaultSelector()  # its own selector: checked between polls, at most 0.5 s late
    stdin.register(sys.stdin.fileno(), selectors.EVENT_READ)
    closed = [False]

    def until() -> bool:
        if not closed[0] and stdin.select(0):
            closed[0] = not os.read(sys.stdin.fileno(), 4096)
        return closed[0]

    fleet.serve(until)
    # What the broker still forwards (the last receipts) is counted: every answer's receipt, or 5 s of silence. A
    # half-second gap was not enough at 10,000 devices: a broker saving its state pauses longer than that.
    silent = 0.0
    while fleet.receipts < fleet.answered and silent < 5.0:
        silent = 0.0 if fleet.loop.poll(0.5, fleet._on_packet) else silent + 0.5
    fleet.stop()
    print(f"stats answered {fleet.answered} receipts {fleet.receipts} manifests {fleet.manifests} "
          f"floor_answered {fleet.floor_answered} floor_receipts {fleet.floor_receipts}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
