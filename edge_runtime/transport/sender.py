"""Drains the outbox through an MQTT link, and forgets an update only when its receipt arrives."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import wire
from .fragments import DEFAULT_MAX_PAYLOAD, fragment
from .mqtt import MqttLink
from .outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)


class OutboxSender:
    """Sends pending entries in order; resends those without a receipt after ``resend_after`` seconds.

    With ``receipt_topic`` None an entry is forgotten at the broker's PUBACK
    instead (for messages nobody acknowledges end to end). An entry above
    ``max_payload`` bytes goes out as fragments (see fragments.py).
    """

    def __init__(
        self,
        link: MqttLink,
        outbox: Outbox,
        receipt_topic: str | None = None,
        ack_timeout: float = 10.0,
        resend_after: float = 30.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        open_receipt: Callable[[bytes], wire.Receipt] | None = None,
    ) -> None:
        self.link = link
        # How a receipt is read: in signed mode only the gateway's signed ones count (a forged receipt would
        # make the device forget an update the gateway never saw).
        self.open_receipt = open_receipt or (lambda payload: wire.decode(payload, expect=wire.Receipt))
        self.outbox = outbox
        self.ack_timeout = ack_timeout
        self.resend_after = resend_after
        self.max_payload = max_payload
        self.until_receipt = receipt_topic is not None
        self._sent_at: dict[bytes, float] = {}
        # Ids receipted lately: a flush pass that listed the outbox before a receipt removed an entry
        # must not send it again. Bounded: only the last few thousand can still be in such a listing.
        self._receipted: dict[bytes, None] = {}
        self.refused_receipts = 0  # receipts that did not decode or verify: nothing was forgotten for them
        # Two locks on purpose: _state guards _sent_at for a few instructions and is what paho's network
        # thread takes in callbacks; _flushing serialises flushes and is held across PUBACK waits, which
        # only the network thread can satisfy, so no callback may ever take it.
        self._state = threading.Lock()
        self._flushing = threading.Lock()
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if receipt_topic is not None:
            link.subscribe(receipt_topic, self._on_receipt)
        link.on_connect_hooks.append(self._on_connect)

    def _on_connect(self) -> None:
        # What the broker held before a disconnect may be gone: resend everything not yet receipted.
        with self._state:
            self._sent_at.clear()
        self.kick()

    def _on_receipt(self, topic: str, payload: bytes) -> None:
        try:
            receipt = self.open_receipt(payload)
        except wire.WireError as exc:
            self.refused_receipts += 1
            log.warning("refused a receipt on %s: %s", topic, exc)
            return
        for message_id, reason in receipt.refused.items():
            log.warning("gateway refused update %s: %s", message_id.hex()[:12], reason)
        for message_id in [*receipt.received, *receipt.refused]:
            with self._state:
                self._receipted[message_id] = None
                while len(self._receipted) > 4096:
                    del self._receipted[next(iter(self._receipted))]
            if self.outbox.remove_id(message_id):
                with self._state:
                    self._sent_at.pop(message_id, None)

    def receipted(self, message_id: bytes) -> bool:
        """Whether a receipt named this message lately (the last few thousand): the gateway has it for good."""
        with self._state:
            return message_id in self._receipted

    def submit(self, entry: OutboxEntry) -> None:
        """Store first (durable), then try to send: nothing is lost if the link or the process dies now."""
        self.outbox.put(entry)
        self.kick()

    def kick(self) -> None:
        threading.Thread(target=self.flush, name="outbox-flush", daemon=True).start()

    def flush(self) -> int:
        """Send what is due; returns how many the broker acknowledged. Stops at the first failure.

        A flush asked for while another runs is not lost: it marks the outbox as wanted again, and
        the running flush takes another pass (entries stored after its pass began would otherwise
        wait for the timer or the next reconnect).
        """
        self._wanted.set()
        sent = 0
        while self._wanted.is_set():
            if not self._flushing.acquire(blocking=False):
                return sent  # the running flush will see _wanted
            try:
                self._wanted.clear()
                done, link_up = self._flush_once()
                sent += done
            finally:
                self._flushing.release()
            if not link_up:
                break  # the reconnect hook flushes again
        return sent

    def _flush_once(self) -> tuple[int, bool]:
        sent = 0
        for entry in self.outbox.pending():
            with self._state:
                if entry.message_id in self._receipted:
                    continue  # receipted after this pass listed the outbox
                last = self._sent_at.get(entry.message_id)
            if last is not None and time.monotonic() - last < self.resend_after:
                continue
            if not self._publish(entry):
                log.info("outbox: %d waiting for the broker", len(self.outbox))
                return sent, False
            sent += 1
            if self.until_receipt:
                with self._state:
                    self._sent_at[entry.message_id] = time.monotonic()
            else:
                self.outbox.remove(entry)
        return sent, True

    def _publish(self, entry: OutboxEntry) -> bool:
        for part in fragment(entry.message_id, entry.payload, self.max_payload):
            if not self.link.publish(entry.topic, part, qos=1, timeout=self.ack_timeout):
                return False  # the whole entry goes again later; the receiver keeps what it has by message id
        return True

    def start(self, period: float | None = None) -> OutboxSender:
        """Flush periodically in the background (resends and expiries happen here)."""
        interval = period or max(0.1, self.resend_after / 2)

        def run() -> None:
            while not self._stop.wait(interval):
                self.flush()

        self._thread = threading.Thread(target=run, name="outbox-timer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
