"""Bytes on the wire, both ways: a loopback TCP proxy in front of the broker that counts what it forwards.

Counting at the TCP level takes everything a device's link costs: MQTT fixed
and variable headers, topics, PUBACKs, SUBSCRIBEs, pings, and under TLS the
handshake and each record's overhead; what paho hands the socket would miss
TLS, and a payload count misses MQTT. Only the connections routed through the
proxy are counted (the benchmarks route the devices, not the gateway).

On a plain (non-TLS) link the proxy also reads the MQTT packets as they pass
(their fixed header and, for PUBLISH, the topic) and counts bytes per kind
(``PUBLISH update``, ``PUBACK``, ``SUBSCRIBE``...), to say where the bytes go.
It forwards the bytes untouched either way.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field

PACKETS = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
           8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
           14: "DISCONNECT", 15: "AUTH"}  # fmt: skip
UP, DOWN = 0, 1  # client to broker, broker to client


def topic_kind(topic: str) -> str:
    """A topic's kind for the breakdown: its last level, or the one before a chunk's index."""
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-2] == "chunk":
        return "chunk"
    return parts[-1] if parts else topic


@dataclass
class Counts:
    up: int = 0
    down: int = 0
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [up bytes, down bytes]
    connections: int = 0

    def minus(self, earlier: Counts) -> Counts:
        kinds = {k: [v[0] - earlier.kinds.get(k, [0, 0])[0], v[1] - earlier.kinds.get(k, [0, 0])[1]]
                 for k, v in self.kinds.items()}  # fmt: skip
        return Counts(self.up - earlier.up, self.down - earlier.down, kinds, self.connections - earlier.connections)


class _MqttReader:
    """Splits one direction's byte stream into MQTT packets, counting each packet's bytes by kind."""

    def __init__(self, direction: int, kinds: defaultdict[str, list[int]]) -> None:
        self.direction = direction
        self.kinds = kinds
        self.buffer = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self.buffer += data
        while True:
            size = self._packet_size()
            if size is None or len(self.buffer) < size:
                return
            packet = bytes(self.buffer[:size])
            del self.buffer[:size]
            self.kinds[self._kind(packet)][self.direction] += size

    def _packet_size(self) -> int | None:
        buf = self.buffer
        length, shift = 0, 0
        for i in range(1, 5):
            if i >= len(buf):
                return None
            length |= (buf[i] & 0x7F) << shift
            shift += 7
            if not buf[i] & 0x80:
                return 1 + i + length
        self.broken = True  # not MQTT (TLS): totals only
        return None

    @staticmethod
    def _kind(packet: bytes) -> str:
        name = PACKETS.get(packet[0] >> 4, "?")
        if name != "PUBLISH":
            return name
        i = 1
        while packet[i] & 0x80:
            i += 1
        i += 1
        n = int.from_bytes(packet[i : i + 2], "big")
        return f"PUBLISH {topic_kind(packet[i + 2 : i + 2 + n].decode(errors='replace'))}"


class WireMeter:
    """``with WireMeter(host, port) as meter``: clients connect to ``meter.port`` instead of the broker's."""

    def __init__(self, host: str, port: int, mqtt: bool = True) -> None:
        self.target = (host, port)
        self.mqtt = mqtt
        self._lock = threading.Lock()
        self._up = 0
        self._down = 0
        self._connections = 0
        self._kinds: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-meter", daemon=True)

    def __enter__(self) -> WireMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def snapshot(self) -> Counts:
        with self._lock:
            kinds = {k: list(v) for k, v in self._kinds.items()}
            return Counts(self._up, self._down, kinds, self._connections)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                if key.data is None:
                    self._accept()
                else:
                    self._forward(key.fileobj, *key.data)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = _MqttReader(UP, self._kinds) if self.mqtt else None
        down = _MqttReader(DOWN, self._kinds) if self.mqtt else None
        self._selector.register(client, selectors.EVENT_READ, (upstream, UP, up))
        self._selector.register(upstream, selectors.EVENT_READ, (client, DOWN, down))
        with self._lock:
            self._connections += 1

    def _forward(self, source: socket.socket, sink: socket.socket, direction: int, reader: _MqttReader | None) -> None:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(source, sink)
            return
        try:
            sink.sendall(data)
        except OSError:
            self._close(source, sink)
            return
        with self._lock:
            if direction == UP:
                self._up += len(data)
            else:
                self._down += len(data)
            if reader is not None:
                reader.feed(data)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
