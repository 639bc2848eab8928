"""Secure aggregation rounds at the gateway, between the round machinery and MQTT, without MQTT itself.

A round opened under ``[secagg]`` is one SecAgg+ session over the devices
asked (``gateway/secagg.py``): ``open`` makes each device's setup (sent
before its task), ``answer`` takes the devices' answers (paho's thread),
and ``tick`` (the round thread) moves the session to its next step when
every device expected has answered or the step's deadline passed, returning
the requests to send, and at the end the sum or why there is none. The
service closes the round on the sum (``Rounds.secure_close``) or fails it
(``Rounds.secure_fail``); nothing of a failed session is published.

Deadlines: keys and shares get ``step_deadline`` each; the masked input is
due ``step_deadline`` before the round's deadline (devices train
meanwhile); the unmasking gets what is left, at most ``step_deadline``.
The coordinates of the next round come from this round's sum, which the
published model reveals anyway.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.secagg.errors import SecAggFailed

from .config import SecAggSection
from .privacy.accountant import LedgerEntry
from .secagg import SecAggResult, ServerSession, choose_coordinates, holders_of, ledger_entry, plan, threshold_for

log = logging.getLogger(__name__)

ANSWERS: dict[int, str] = {
    wire.SecAggAdvertise.TYPE: "advertise",
    wire.SecAggShares.TYPE: "shares",
    wire.SecAggMasked.TYPE: "masked",
    wire.SecAggReveal.TYPE: "reveal",
}
ANSWER_CLASSES: dict[str, type] = {
    "advertise": wire.SecAggAdvertise, "shares": wire.SecAggShares, "masked": wire.SecAggMasked,
    "reveal": wire.SecAggReveal,
}  # fmt: skip


@dataclass
class Outgoing:
    """What a tick asks the service to do."""

    round: int = 0
    requests: list[tuple[str, Any]] = field(default_factory=list)  # (device, message)
    deadline: float = 0.0  # the requests' expiry
    result: SecAggResult | None = None
    failure: str | None = None


class SecureRounds:
    def __init__(self, settings: SecAggSection, sizes: dict[int, int], density: float) -> None:
        self.settings = settings
        self.sizes = dict(sizes)
        self.fraction = settings.coordinates or density
        self.previous: dict[int, np.ndarray] | None = None  # the last sum's mean: where the model moved
        self._lock = threading.Lock()
        self.session: ServerSession | None = None
        self.phase = ""
        self.expected: set[str] = set()
        self.answered: set[str] = set()
        self.phase_deadline = 0.0
        self.round_deadline = 0.0
        self.taken = (0, "")  # (round, step) of the last answer taken: paho's thread reads it right after

    @property
    def round(self) -> int | None:
        return self.session.round if self.session is not None else None

    def state(self) -> dict[str, Any] | None:
        """The open session as the operator sees it (``gateway status``): its step, who answered it, how many
        masked inputs are in so far against the threshold and the fewest survivors a sum needs."""
        with self._lock:
            session = self.session
            if session is None:
                return None
            return {
                "round": session.round, "step": self.phase, "devices": len(session.devices),
                "asked": len(self.expected), "answered": len(self.answered & self.expected),
                "masked": len(session.masked), "threshold": session.threshold,
                "min_survivors": session.min_survivors, "coordinates": session.size,
                "step_deadline": self.phase_deadline,
            }  # fmt: skip

    def open(self, number: int, devices: list[str], now: float, round_deadline: float) -> list[tuple[str, Any]]:
        """A session for round ``number`` over ``devices``: their setups."""
        s = self.settings
        total = sum(self.sizes.values())
        count = max(1, min(total, round(self.fraction * total)))
        coordinates = choose_coordinates(self.sizes, count, os.urandom(32), self.previous, s.random_share)
        n = len(devices)
        degree = min(n - 1, s.degree or 4 * math.ceil(math.log2(max(2, n))))
        threshold = threshold_for(holders_of(n, degree), s.threshold) if n > 1 else 1
        field_plan = plan(n, count, s.clip, s.input_bits, s.noise_multiplier, threshold, s.value_bound)
        with self._lock:
            self.session = ServerSession(sorted(devices), number, coordinates, field_plan, s.clip, degree, threshold,
                                         threshold, int(round_deadline))  # fmt: skip
            self.phase, self.expected, self.answered = "advertise", set(devices), set()
            self.phase_deadline = now + s.step_deadline
            self.round_deadline = round_deadline
            setups = list(self.session.setups().items())
        log.info("round %d: secure aggregation over %d devices, %d coordinates, degree %d, threshold %d, %d-bit field",
                 number, n, count, degree, threshold, field_plan.bits)  # fmt: skip
        return setups

    def ledger_entry(self, result: SecAggResult) -> LedgerEntry | None:
        """Distributed DP: the round's event for the ledger (none without noise)."""
        if not self.settings.noise_multiplier:
            return None
        return ledger_entry(result, self.settings.clip, len(result.survivors) + len(result.dropped))

    def discard(self, number: int) -> None:
        """The round ended without the session (its deadline passed): forget it."""
        with self._lock:
            if self.session is not None and self.session.round == number:
                self.session = None

    def answer(self, device: str, payload: bytes) -> str | None:
        """Take one device's answer (opened, unsigned CBOR); None when taken, else why it is refused."""
        kind = ANSWERS.get(wire.peek_type(payload) or -1)
        if kind is None:
            return "not a secure aggregation answer"
        try:
            message = wire.decode(payload, expect=ANSWER_CLASSES[kind])
        except wire.WireError as exc:
            return f"{type(exc).__name__}: {exc}"
        with self._lock:
            session = self.session
            if session is None:
                return f"a {kind} answer with no session open"
            if kind != self.phase or device not in self.expected:
                return f"a {kind} answer from {device} at step {self.phase} of round {session.round}"
            if device in self.answered:
                return f"a second {kind} answer from {device}"
            try:
                getattr(session, {"advertise": "advertise", "shares": "shares", "masked": "masked_input",
                                  "reveal": "reveal"}[kind])(device, message)  # fmt: skip
            except ValueError as exc:
                return str(exc)
            self.answered.add(device)
            self.taken = (session.round, kind)
        return None

    def tick(self, now: float) -> Outgoing:
        """The next step's requests once the current step is complete or past its deadline."""
        with self._lock:
            session = self.session
            if session is None or not (self.expected <= self.answered or now >= self.phase_deadline):
                return Outgoing()
            out = Outgoing(session.round, deadline=self.round_deadline)
            step = self.settings.step_deadline
            missing = sorted(self.expected - self.answered)
            if missing:
                log.warning("round %d: no %s answer from %s by its deadline", session.round, self.phase, missing)
            if self.phase == "advertise":
                requests: dict[str, Any] = session.key_lists()
                self.phase, self.phase_deadline = "shares", now + step
            elif self.phase == "shares":
                requests = session.collects()
                self.phase, self.phase_deadline = "masked", max(now + step, self.round_deadline - step)
            elif self.phase == "masked":
                requests = session.unmasks()
                self.phase, self.phase_deadline = "reveal", min(now + step, max(now, self.round_deadline - 1))
            else:
                self.session = None
                try:
                    out.result = session.result()
                except SecAggFailed as exc:
                    out.failure = str(exc)
                    return out
                self.previous = {t: np.zeros(n) for t, n in self.sizes.items()}
                for tensor, (indices, values) in out.result.sum.items():
                    self.previous[tensor][indices] = values / max(1, len(out.result.survivors))
                return out
            if not requests:
                self.session = None
                try:
                    session.result()
                    out.failure = f"secagg round {session.round}: nobody left to ask at step {self.phase}"
                except SecAggFailed as exc:
                    out.failure = str(exc)
                return out
            self.expected, self.answered = set(requests), set()
            out.requests = list(requests.items())
            return out
