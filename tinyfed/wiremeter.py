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

Forwarding never blocks: each connection end keeps the bytes waiting for it
and is written when its socket can take them, and an end whose peer has
``BACKLOG`` bytes waiting is not read until they drain (backpressure on that
connection alone). A blocking send made one device that was slow to read
(its network thread busy installing a whole model, on a loaded machine)
stall every other device's traffic behind it; the benchmarks' whole-int8
variant, which sends every device the whole model each round, is where that
showed.
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


BACKLOG = 1 << 20  # bytes waiting for one end before its peer is no longer read


@dataclass(eq=False)
class _End:
    """One side of a proxied connection: what was read from it goes to ``peer``; ``pending`` waits to be written
    to it."""

    sock: socket.socket
    direction: int  # of the bytes read from this end: UP from a client, DOWN from the broker
    reader: _MqttReader | None
    pending: bytearray = field(default_factory=bytearray)
    peer: _End | None = None
    mask: int = 0  # the events it is registered for (0: not registered)
    closed: bool = False


class WireMeter:
    """``with WireMeter(host, port) as meter``: clients connect to ``meter.port`` instead of the broker's."""

    def __init__(self, host: str, port: int, mqtt: bool = True) -> None:
        self.target = (host, port)
        self.mqtt = mqtt
        self._lock = threading.Lock()
        self._up = 0
        self._down = 0
        self._connections = 0
        self._ends: list[_End] = []
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
        self._listener.close()
        for end in self._ends:
            end.sock.close()
        self._selector.close()

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def snapshot(self) -> Counts:
        with self._lock:
            kinds = {k: list(v) for k, v in self._kinds.items()}
            return Counts(self._up, self._down, kinds, self._connections)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, events in self._selector.select(timeout=0.2):
                end = key.data
                if end is None:
                    self._accept()
                    continue
                if events & selectors.EVENT_WRITE and not end.closed:
                    self._flush(end)
                if events & selectors.EVENT_READ and not end.closed:
                    self._read(end)

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
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        near = _End(client, UP, _MqttReader(UP, self._kinds) if self.mqtt else None)
        far = _End(upstream, DOWN, _MqttReader(DOWN, self._kinds) if self.mqtt else None)
        near.peer, far.peer = far, near
        self._ends = [e for e in self._ends if not e.closed] + [near, far]
        self._watch(near)
        self._watch(far)
        with self._lock:
            self._connections += 1

    def _watch(self, end: _End) -> None:
        """Register ``end`` for what it can do now: read while its peer's backlog is short, write while it has
        bytes waiting."""
        assert end.peer is not None
        if end.closed:
            return
        mask = (selectors.EVENT_READ if len(end.peer.pending) < BACKLOG else 0) | (
            selectors.EVENT_WRITE if end.pending else 0
        )
        if mask == end.mask:
            return
        if end.mask == 0:
            self._selector.register(end.sock, mask, end)
        elif mask == 0:
            self._selector.unregister(end.sock)
        else:
            self._selector.modify(end.sock, mask, end)
        end.mask = mask

    def _read(self, end: _End) -> None:
        peer = end.peer
        assert peer is not None
        try:
            data = end.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(end)
            return
        with self._lock:
            if end.direction == UP:
                self._up += len(data)
            else:
                self._down += len(data)
            if end.reader is not None:
                end.reader.feed(data)
        peer.pending += data
        self._flush(peer)
        self._watch(end)

    def _flush(self, end: _End) -> None:
        """Write what waits for ``end`` as far as its socket takes it."""
        assert end.peer is not None
        try:
            sent = end.sock.send(end.pending) if end.pending else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(end)
            return
        del end.pending[:sent]
        self._watch(end)
        self._watch(end.peer)

    def _close(self, end: _End) -> None:
        """Close both sides; what still waits for the peer is given a last short chance to go out."""
        peer = end.peer
        assert peer is not None
        if peer.pending and not peer.closed:
            with contextlib.suppress(OSError):
                peer.sock.settimeout(1.0)
                peer.sock.sendall(peer.pending)
        for side in (end, peer):
            if side.closed:
                continue
            side.closed = True
            if side.mask:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(side.sock)
            side.mask = 0
            side.sock.close()
