"""One MQTT connection of a device, a bridge or the gateway, on paho-mqtt 2.x.

- MQTT 5 by default (session expiry, message expiry on tasks); ``protocol =
  "3.1.1"`` for brokers without it, ``"auto"`` tries 5 then falls back.
- Persistent sessions (clean start off, a session expiry) and QoS 1, so the
  broker keeps a device's tasks while it is away.
- Reconnection is ours, not paho's: paho's backoff has no jitter, and a fleet
  that lost its hub reconnects in lockstep. Here every retry waits a uniform
  draw up to an exponentially growing cap ("full jitter").
- TLS (CA file, client certificate) and username/password.
- One client per client id. Two clients with the same id (two Pis both called
  ``raspberrypi``, a second gateway) would take the id from each other
  forever, each reconnect dropping the other. One of them stops instead,
  with :class:`ClientIdConflict` (exit code 5): the one the broker drops
  with "Session taken over" (MQTT 5 reason 0x8E, Mosquitto >= 2.0.15), or,
  on brokers that just close the connection, the one whose *claim* on the
  id is not the latest (see :meth:`MqttLink._on_claim`).
- A publish the broker refuses (MQTT 5 PUBACK with a failure reason, such
  as "Not authorized" from an ACL) is not a delivered one: ``publish``
  with a timeout says False and the refusal is logged. MQTT 3.1.1 has no
  way to say so; there a refused publish looks delivered.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import wire
from ..errors import ExitCode
from .broker_config import BrokerConfig as BrokerConfig  # re-exported: its historical home
from .broker_config import TransportError as TransportError

log = logging.getLogger(__name__)
Handler = Callable[[str, bytes], None]
MATCH_CACHE = 100_000  # topics whose matching handlers are remembered (a hub's devices' update and presence topics)
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with this client id


class ClientIdConflict(TransportError):
    """Another client connected with this one's client id: reconnecting would only take it back, endlessly."""

    exit_code = ExitCode.ID_CONFLICT


@dataclass
class Will:
    topic: str
    payload: bytes
    retain: bool = True


def _written_by_the_network_thread(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Registered so that paho never writes from a caller's thread (see ``MqttLink._make_client``)."""


class MqttLink:
    """A persistent, self-reconnecting connection with per-topic handlers."""

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        will: Will | None = None,
        rng: random.Random | None = None,
        claim_topic: str | None = None,
        conflict_hint: str = "",
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.will = will
        self.host, self.port, self.tls = config.endpoint()
        self.rng = rng or random.Random()
        self.connected = threading.Event()
        self.on_connect_hooks: list[Callable[[], None]] = []
        self._handlers: dict[str, tuple[int, Handler]] = {}
        # topic -> the handlers whose pattern matches it, as of ``_handlers``' last change: a gateway hears the
        # same few thousand device topics again and again, and matching every pattern was per-message work.
        self._matching: dict[str, list[Handler]] = {}
        self._expiries: dict[int, Properties] = {}  # message expiry (s) -> its PUBLISH properties
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # SUBACK bookkeeping. The lock is held for a few instructions only, never across a paho call:
        # paho's network thread calls us back while holding its own mutexes.
        self._pending_subs: set[int] = set()
        self._early_subacks: set[int] = set()
        self.subscribed = threading.Event()  # every subscription acknowledged (SUBACK) on this connection
        self._subs_lock = threading.Lock()
        self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
        self.last_error = ""
        self._connack_seen = False
        # The id's claim (see _on_claim): ours once made, the highest of others seen, this connection's probe.
        self.claim_topic = claim_topic
        self.conflict_hint = conflict_hint
        self.claim: int | None = None
        self._highest_claim = 0
        self._probe = 0
        self.claimed = threading.Event()  # our claim came back from the broker
        self.fatal: ClientIdConflict | None = None  # set once another client holds our id; the link has stopped
        self.on_fatal_hooks: list[Callable[[ClientIdConflict], None]] = []
        if claim_topic is not None:
            self._handlers[claim_topic] = (1, self._on_claim)
        self._unanswered = False  # this attempt's CONNACK watchdog gave up (and said so in last_error)
        self._refused: dict[int, str] = {}  # message id -> the reason of the PUBACK that refused it (MQTT 5)
        self._refused_lock = threading.Lock()  # like _subs_lock: a few instructions, never across a paho call
        # Payload bytes handed to the broker since start (what an operator's metrics call downlink); its own lock.
        self.published_bytes = 0
        self._count_lock = threading.Lock()
        self._client = self._make_client()

    # -- setup ------------------------------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        v5 = self.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.tls:
            client.tls_set(ca_certs=self.config.ca_file, certfile=self.config.cert_file, keyfile=self.config.key_file)
            # Without a loop_start() thread (ours runs paho's loop itself), paho writes each packet from the
            # thread that publishes, while its network thread reads the same socket: an SSL socket does not
            # survive that (the broker sees "decryption failed or bad record mac" and drops us). With a
            # socket-write callback registered, paho only wakes its loop (_run), and the network thread writes.
            client.on_socket_register_write = _written_by_the_network_thread
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        return client

    def _connect_properties(self) -> Properties | None:
        if self.protocol != "5":
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry
        return props

    # -- callbacks (paho's network thread) -------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connack_seen = True
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("%s: %s", self.client_id, self.last_error)
            return
        self.last_error = ""
        self.subscribed.clear()
        with self._subs_lock:
            self._pending_subs.clear()
            self._early_subacks.clear()
        for topic, (qos, _) in list(self._handlers.items()):
            self._track_subscription(client.subscribe(topic, qos)[1])
        with self._subs_lock:
            if not self._pending_subs:
                self.subscribed.set()
        if self.claim_topic is not None:  # after the subscription, so its echo follows the retained claim
            self._probe = secrets.randbits(62)
            probe = wire.Presence(self.client_id, False, self._probe, int(time.time()))
            client.publish(self.claim_topic, wire.encode(probe), qos=1)
        self.connected.set()
        log.info("%s connected to %s:%d (MQTT %s)", self.client_id, self.host, self.port, self.protocol)
        for hook in list(self.on_connect_hooks):
            try:
                hook()
            except Exception:  # a hook must not take the connection down
                log.exception("on-connect hook failed")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self._conflict("the broker said 'Session taken over', MQTT 5 reason 0x8E")
        if self._stopping.is_set():
            return
        if not self._connack_seen and not self._unanswered:  # the broker closed first: with TLS, our certificate
            self.last_error = f"{self.host}:{self.port} closed the connection before answering CONNECT" + (
                " (TLS: no client certificate, one from another CA, or a revoked one?)" if self.tls else ""
            )
            log.warning("%s: %s; retrying", self.client_id, self.last_error)
        else:
            log.warning("%s lost the broker (%s); reconnecting", self.client_id, reason)

    def _on_claim(self, topic: str, payload: bytes) -> None:
        """Claims on the id: the latest claim's holder keeps it; any other holder that sees it stops.

        A claim is a retained Presence whose ``seq`` is a generation (high bits) and a random number (low
        32 bits). On every connect the link sends a probe (a Presence with ``online`` false, not retained)
        after subscribing: when its echo returns, the retained claim has been seen, and the link (re)claims
        the id, the first time with a generation above every claim seen. So a client starting beside a
        running one claims above it, and the running one stops when it sees that claim at its next connect
        (which the newcomer's connect forces); a claim below ours (the run before ours, a wiped SD card's,
        an old message the broker delivers again with a resumed session) is not a conflict; two that
        start at the same moment, without seeing each other, are ordered by their random numbers, the
        re-claim at every connect making sure the lower one sees the higher.
        """
        if not payload:
            return  # a cleared retained message
        try:
            message = wire.decode(payload, expect=wire.Presence)
        except wire.WireError as exc:
            log.warning("%s: ignored an unreadable claim on %s: %s", self.client_id, topic, exc)
            return
        if not message.online:  # a probe
            if message.seq != self._probe or self.fatal is not None:
                return  # an older connection's probe, delivered again with the resumed session
            if self.claim is None:
                self.claim = ((self._highest_claim >> 32) + 1) << 32 | secrets.randbits(32)
            claim = wire.Presence(self.client_id, True, self.claim, int(time.time()))
            self._client.publish(topic, wire.encode(claim), qos=1, retain=True)
        elif message.seq == self.claim:
            self.claimed.set()
        else:
            self._highest_claim = max(self._highest_claim, message.seq)
            if self.claim is not None and message.seq > self.claim:
                when = time.strftime("%H:%M:%S", time.localtime(message.timestamp))
                self._conflict(f"another process claimed the id at {when}, after this one")

    def _conflict(self, how: str) -> None:
        """Stop for good and say why: paho's thread, so nothing here waits."""
        if self.fatal is not None:
            return
        hint = f"; {self.conflict_hint}" if self.conflict_hint else ""
        self.fatal = ClientIdConflict(
            f"another MQTT client connected to {self.host}:{self.port} with the client id {self.client_id!r} "
            f"({how}){hint}. This one stopped rather than take the id back in an endless reconnect loop"
        )
        log.error("%s", self.fatal)
        self._stopping.set()
        self.connected.clear()
        # Dropped, not disconnected: the broker then publishes our last will, so no presence of ours (the birth
        # said on the reconnect that found the conflict) outlives us; the other client says its own again.
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for hook in list(self.on_fatal_hooks):
            try:
                hook(self.fatal)
            except Exception:
                log.exception("on-fatal hook failed")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        topic, cache = message.topic, self._matching  # a (un)subscribe replaces the cache after changing _handlers
        handlers = cache.get(topic)
        if handlers is None:  # handlers may (un)subscribe: the list is a copy
            handlers = [h for pattern, (_, h) in list(self._handlers.items()) if paho.topic_matches_sub(pattern, topic)]
            if len(cache) >= MATCH_CACHE:
                cache.clear()
            cache[topic] = handlers
        for handler in handlers:
            try:
                handler(topic, bytes(message.payload))
            except Exception:  # hostile payloads are refused by handlers; a bug must not kill the link
                log.exception("handler for %s failed on a message of %d bytes", topic, len(message.payload))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("%s: broker refused a subscription: %s", self.client_id, failed)
        with self._subs_lock:
            if mid in self._pending_subs:
                self._pending_subs.discard(mid)
            else:  # the SUBACK beat the caller's bookkeeping
                self._early_subacks.add(mid)
            if not self._pending_subs:
                self.subscribed.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """Runs before paho marks the message published, so ``publish`` sees the refusal once its wait ends."""
        with self._refused_lock:
            if getattr(reason, "is_failure", False):
                self._refused[mid] = str(reason)
            else:
                self._refused.pop(mid, None)  # message ids are reused: only the latest PUBACK of each counts
        if getattr(reason, "is_failure", False):
            log.warning("%s: the broker refused publish %d: %s", self.client_id, mid, reason)

    def _track_subscription(self, mid: int | None) -> None:
        if mid is None:
            return
        with self._subs_lock:
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
            else:
                self._pending_subs.add(mid)
                self.subscribed.clear()

    # -- the connection loop ------------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.config.backoff_cap, self.config.backoff_base * 2**attempt))

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                if self.protocol == "5":
                    self._client.connect(
                        self.host,
                        self.port,
                        self.config.keepalive,
                        clean_start=False,
                        properties=self._connect_properties(),
                    )
                else:  # 3.1.1 has no clean_start; clean_session=False was set on the client
                    self._client.connect(self.host, self.port, self.config.keepalive)
            except OSError as exc:
                self.last_error = f"cannot reach broker {self.host}:{self.port}: {exc.strerror or exc}"
                self._stopping.wait(self._backoff(attempt))
                attempt += 1
                continue
            self._connack_seen = False
            self._unanswered = False
            watchdog = threading.Timer(self.config.connack_timeout, self._drop_if_unanswered)
            watchdog.daemon = True
            watchdog.start()
            # loop(), not loop_forever(): loop() sets up paho's wake-up socket pair, so a publish from another
            # thread (which, with TLS, only queues the packet: see _make_client) is written at once.
            while self._client.loop(timeout=1.0) == paho.MQTT_ERR_SUCCESS:
                pass
            watchdog.cancel()
            # A 3.1.1-only broker either answers CONNACK "unsupported protocol version" or, like amqtt,
            # closes the socket without any CONNACK: both mean "speak 3.1.1".
            if (
                self.config.protocol == "auto"
                and self.protocol == "5"
                and not self.connected.is_set()
                and (not self._connack_seen or "protocol" in self.last_error.lower())
            ):
                log.info("%s: broker does not speak MQTT 5, falling back to 3.1.1", self.client_id)
                self.protocol = "3.1.1"
                self._client = self._make_client()
            attempt = 0 if self.connected.is_set() else attempt + 1
            self.connected.clear()
            if not self._stopping.is_set():
                self._stopping.wait(self._backoff(attempt))

    def _drop_if_unanswered(self) -> None:
        """A broker that neither answers CONNECT nor closes (amqtt on an MQTT 5 CONNECT) would hold us until
        the keepalive expires; shutting the socket ends the loop at once."""
        if self._connack_seen or self._stopping.is_set():
            return
        self._unanswered = True
        self.last_error = f"no CONNACK from {self.host}:{self.port} within {self.config.connack_timeout} s"
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def start(self) -> MqttLink:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def require_connected(self, timeout: float) -> None:
        """Wait for the broker, or raise TransportError with the reason (for a clear start-up message)."""
        if not self.wait_connected(timeout):
            if self.fatal is not None:
                raise self.fatal
            raise TransportError(self.last_error or f"no connection to {self.host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(Exception):  # already gone
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- messaging ---------------------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        self._handlers[topic] = (qos, handler)
        self._matching = {}
        if self.connected.is_set():
            self._track_subscription(self._client.subscribe(topic, qos)[1])

    def unsubscribe(self, topic: str) -> None:
        """Drop the handler of exactly ``topic`` (a filter given to subscribe) and tell the broker."""
        self._handlers.pop(topic, None)
        self._matching = {}
        if self.connected.is_set():
            self._client.unsubscribe(topic)

    def wait_ready(self, timeout: float) -> bool:
        """Connected and every subscription acknowledged: messages for us will now be kept for us."""
        deadline = time.monotonic() + timeout
        return self.connected.wait(timeout) and self.subscribed.wait(max(0.0, deadline - time.monotonic()))

    def _expiry_properties(self, seconds: int) -> Properties:
        """The PUBLISH properties carrying a message expiry, made once per value: paho's Properties is costly to
        build (a round's thousands of tasks share one deadline), and paho only reads it (packs it) once made."""
        props = self._expiries.get(seconds)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = seconds
            if len(self._expiries) >= 64:
                self._expiries.clear()
            self._expiries[seconds] = props
        return props

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Publish; with ``timeout``, wait for the broker's PUBACK and say whether it came and accepted the message.

        Returns False at once while disconnected: callers keep the message (the outbox does).
        """
        if not self.connected.is_set():
            return False
        props = None
        if expiry is not None and self.protocol == "5":
            props = self._expiry_properties(max(1, int(expiry)))
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return False
        with self._count_lock:
            self.published_bytes += len(payload)
        if timeout is None or qos == 0:
            return True
        try:
            info.wait_for_publish(timeout)  # paho's own PUBACK wait
        except (RuntimeError, ValueError):
            return False
        if not info.is_published():
            return False
        with self._refused_lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None:  # _on_publish has logged it
            log.debug("%s: publish on %s refused: %s", self.client_id, topic, refused)
            return False
        return True
