"""A device's part in secure aggregation rounds over MQTT: the gateway's requests arrive on the task topic, the
answers leave on the update topic, one session per round, in a thread of its own.

Requests are opened under the gateway's pinned key (signed mode) and handled
in order by a worker, never on paho's thread. The input is ready when the
round's task has trained (``input_ready``, from the agent's task thread);
a collect request that comes first waits for it until the session's
deadline. Answers go through an outbox of their own (``secagg-outbox``
in the device's storage), forgotten at the broker's PUBACK: a short
broker outage delays them until the link is back (or the round's deadline
passes), instead of making the device a dropout. No gateway receipt is
waited for: the next request is the gateway's acknowledgement, and a
session's answers are worthless after a restart (its secrets were in
memory), so the outbox is emptied when the participant is made. The
residual of what was not sent is kept on disk, committed only once the
masked input is in the outbox.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import wire
from ..compress.feedback import ResidualStore
from ..failures import FailureReason, TaskFailed
from ..transport.mqtt import MqttLink
from ..transport.outbox import Outbox, OutboxEntry
from ..transport.sender import OutboxSender
from ..transport.topics import Topics
from ..trust import MemberTrust
from ..wire.limits import Limits
from .errors import SecAggRefused
from .sparse import SparseInput

if TYPE_CHECKING:
    from .device import DeviceSession

if importlib.util.find_spec("cryptography") is None:  # as if imported: its users warn that secure rounds are off
    raise ModuleNotFoundError("No module named 'cryptography'", name="cryptography")

log = logging.getLogger(__name__)

REQUESTS = (wire.SecAggSetup, wire.SecAggKeys, wire.SecAggCollect, wire.SecAggUnmask)
REQUEST_LIMITS = Limits(max_message_bytes=1 << 20, max_items=20_000)


class SecAggParticipant:
    def __init__(
        self, device_id: str, topics: Topics, link: MqttLink, trust: MemberTrust, storage: Path,
        ack_timeout: float = 10.0, max_payload: int = 65536,
    ) -> None:  # fmt: skip
        self.device_id = device_id
        self.topics = topics
        self.link = link
        self.trust = trust
        self.outbox = Outbox(storage / "secagg-outbox")
        for stale in self.outbox.pending():  # a session of an earlier process: its secrets are gone
            self.outbox.remove(stale)
        self.sender = OutboxSender(link, self.outbox, receipt_topic=None, ack_timeout=ack_timeout,
                                   max_payload=max_payload)  # fmt: skip
        self.residual_store = ResidualStore(storage / "secagg_residual.npz")
        self.sparse = SparseInput(self.residual_store.load())
        self.session: DeviceSession | None = None
        self.inputs: dict[int, tuple[np.ndarray, dict[int, np.ndarray]]] = {}  # round -> (values, residual)
        self.refused: list[str] = []  # why sessions were refused, newest last (for status and tests)
        self.answered: list[tuple[int, str]] = []  # (round, step) of each answer sent
        self._queue: deque[Any] = deque()
        self._delivered: dict[bytes, None] = {}  # digests of the requests taken lately, oldest first
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- paho's thread ----------------------------------------------------------------------------------------
    def offer(self, payload: bytes) -> bool:
        """Take ``payload`` if it is a secure aggregation request the gateway signed; False leaves it to others."""
        try:
            message = wire.decode(payload, REQUEST_LIMITS, verifier=self.trust.gateway,
                                  require_signature=self.trust.gateway is not None)  # fmt: skip
        except wire.WireError:
            return False  # the task path decodes it again and says what is wrong
        if not isinstance(message, REQUESTS):
            return False
        digest = hashlib.sha256(payload).digest()
        with self._changed:
            # MQTT delivers at least once: the same request again (a reconnect, a restarted broker) is not a new
            # step. Handled twice, a setup would make new keys and a collect would wait for an input already
            # masked, holding up the session's later steps until its deadline.
            if digest in self._delivered:
                log.info("device %s: a %s delivered again; already handled", self.device_id, type(message).__name__)
                return True
            self._delivered[digest] = None
            while len(self._delivered) > 256:
                del self._delivered[next(iter(self._delivered))]
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"secagg-{self.device_id}", daemon=True)
                self._thread.start()
                self.sender.start(period=1.0)  # retries an answer a failed flush left, between reconnects
            self._queue.append(message)
            self._changed.notify_all()
        return True

    def stop(self) -> None:
        self._stop.set()
        self.sender.stop()
        with self._changed:
            self._changed.notify_all()

    # -- the task thread --------------------------------------------------------------------------------------
    def input_ready(self, task: wire.Task, deltas: dict[int, np.ndarray]) -> None:
        """The task's training is done: its input for the round's session. Raises TaskFailed without a session."""
        with self._changed:
            # The setup came before the task, on the same topic; its worker may still be making the session.
            self._changed.wait_for(lambda: self.session is not None and self.session.setup.round == task.round,
                                   max(0.0, min(10.0, task.deadline - time.time())))  # fmt: skip
            session = self.session
            if session is None or session.setup.round != task.round:
                raise TaskFailed(FailureReason.OTHER, f"a secure aggregation task for round {task.round} and no "
                                 "session of that round: nothing is sent in the clear")  # fmt: skip
            try:
                self.inputs[task.round] = self.sparse.prepare(deltas, session.setup)
            except ValueError as exc:
                raise TaskFailed(FailureReason.OTHER, f"secure aggregation input: {exc}") from exc
            self._changed.notify_all()

    # -- the worker ---------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._stop.is_set())
                if self._stop.is_set():
                    return
                message = self._queue.popleft()
            try:
                self._handle(message)
            except SecAggRefused as exc:
                self.refused.append(str(exc))
                log.warning("device %s: %s", self.device_id, exc)
                with self._changed:
                    self.session = None
            except Exception:  # one bad session must not end the device's membership
                log.exception("device %s: secure aggregation step failed", self.device_id)
                with self._changed:
                    self.session = None

    def _handle(self, message: Any) -> None:
        if isinstance(message, wire.SecAggSetup):
            from .device import DeviceSession  # the first session loads cryptography (package docstring)

            session = DeviceSession(message)
            with self._changed:
                self.session = session
                self.inputs = {r: v for r, v in self.inputs.items() if r == message.round}
            self._send(message, "advertise", session.advertise())
            return
        current = self.session
        if current is None or message.session != current.setup.session:
            log.info("device %s: a %s for no session of its own; ignored", self.device_id, type(message).__name__)
            return
        setup = current.setup
        if isinstance(message, wire.SecAggKeys):
            self._send(setup, "shares", current.share(message))
        elif isinstance(message, wire.SecAggCollect):
            with self._changed:
                ready = self._changed.wait_for(
                    lambda: setup.round in self.inputs or self._stop.is_set(), max(0.0, setup.deadline - time.time())
                )
                if not ready or self._stop.is_set():
                    raise SecAggRefused(f"secagg round {setup.round}: the input was not ready by the deadline")
                values, residual = self.inputs.pop(setup.round)
            masked = current.mask(message, values)
            self._send(setup, "masked", masked)
            self.sparse.commit(residual)  # only now: the input is on its way
            self.residual_store.save(residual)
        elif isinstance(message, wire.SecAggUnmask):
            self._send(setup, "reveal", current.reveal(message))
            with self._changed:
                self.session = None

    def _send(self, setup: wire.SecAggSetup, step: str, message: Any) -> None:
        """Into the outbox (on disk), then sent; kept until the broker has it or the round's deadline passes."""
        entry = OutboxEntry(os.urandom(16), self.topics.update(self.device_id), self.trust.seal(wire.encode(message)),
                            expires=float(setup.deadline), created=time.time(),
                            label=f"secagg {step} round {setup.round}")  # fmt: skip
        self.sender.submit(entry)
        self.answered.append((setup.round, step))
