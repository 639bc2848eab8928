"""Admission: whether one decoded update counts in the open round, and with what weight.

A pure function of the update, the topic it arrived on, its norm, the open
round and a read-only view of the store. Nothing here writes, sends or
waits, so every rule is tested in milliseconds without a broker, and the
service calls it under its lock without stalling MQTT intake.

The rules, in the order they are checked (the first that fails names the
refusal the device receives in its receipt and the operator sees in
``gateway status``):

1. the update names the device whose topic it came on;
2. its id is new (an id already counted is a *duplicate*: receipted as
   received so the device stops resending, counted never; an id refused
   before stays refused: a replay);
3. a round is open, and it is not one whose close has begun;
4. an evaluation report (no tensors) answers an evaluation task of this
   device in this round, about the model being evaluated;
5. a training update carries samples (weighed by at most what its birth
   declared and ``max_samples``), a finite norm within the bound, and
   answers a task still open for this device (one reassigned after the
   device looked dead still counts): in synchronous rounds the
   open round's own, on its base model; in asynchronous rounds any open
   task, on the base model that task named, at most ``max_staleness``
   versions old, weighted by (1 + staleness)^-1/2 (FedBuff).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from edge_runtime import wire

from .claims import bounded_samples

DUPLICATE = "duplicate of an update already counted"
# ``Ledger.known_update``'s answer for an update accepted but not yet committed (staged, or in the writer's
# transaction): whether it counts is not known until that commit ends.
UNCOMMITTED = "accepted, commit pending"


class Outcome(Enum):
    ACCEPT = "accept"
    DUPLICATE = "duplicate"
    REFUSE = "refuse"
    # A resend of an update whose first copy is not yet committed: nothing is recorded and no receipt is sent.
    # The first copy's receipt answers the device (same update id); if that commit fails, the device, still
    # unreceipted, resends again and the next copy is judged afresh. A "received" receipt here would tell the
    # device to drop an update a failed commit is about to lose.
    IN_FLIGHT = "in flight"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    kind: str  # "train" | "eval": which aggregate and which task the update answers
    reason: str = ""  # why it was refused (or DUPLICATE); empty when accepted
    weight_factor: float = 1.0  # multiplies the sample count (staleness discount in async rounds)
    samples: int = 0  # the sample count the update weighs: its claim, bounded (see claims.bounded_samples)

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPT

    @property
    def receipt_reason(self) -> str | None:
        """What the device's receipt says: None (received) for accepted and duplicate updates (an update in
        flight gets no receipt of its own: see ``Outcome.IN_FLIGHT``)."""
        return self.reason if self.outcome is Outcome.REFUSE else None


@dataclass(frozen=True)
class RoundView:
    """The part of the open round admission needs."""

    number: int
    mode: str  # sync | async | eval
    base_version: bytes


@dataclass(frozen=True)
class AdmissionRules:
    mode: str  # the federation's round mode: sync | async
    norm_bound: float
    max_staleness: int
    max_samples: int = 100_000


@dataclass(frozen=True)
class TaskRecord:
    """A task as the gateway recorded it when it sent it."""

    status: str  # sent | delivered | reassigned | expired | failed
    base_version: bytes
    task_id: bytes = b""


class Ledger(Protocol):
    """Read-only questions admission asks of the store (``GatewayStore`` answers them)."""

    def known_update(self, update_id: bytes) -> str | None: ...

    def task(self, round_: int, device: str, kind: str) -> TaskRecord | None: ...

    def model_seq(self, version: bytes) -> int | None: ...


# A task given to another device after this one was seen to die still counts when its answer arrives: a
# broker restart makes every device look dead for a moment, and the work they stored meanwhile is real.
ANSWERABLE = ("sent", "reassigned")


def _open_task(ledger: Ledger, round_: int, device: str, kind: str) -> TaskRecord | None:
    task = ledger.task(round_, device, kind)
    return task if task is not None and task.status in ANSWERABLE else None


def update_kind(update: wire.Update) -> str:
    return "train" if update.tensors else "eval"


def admit(
    update: wire.Update,
    device: str,
    norm: float,
    open_round: RoundView | None,
    current_version: bytes,
    ledger: Ledger,
    rules: AdmissionRules,
    closing: int | None = None,
    declared_samples: int | None = None,
) -> Verdict:
    """Judge one update that decoded cleanly against the model's spec. ``closing``: a round being closed;
    ``declared_samples``: what the device's birth message declared (bounds the weight it may claim)."""
    kind = update_kind(update)
    samples = bounded_samples(update.samples, declared_samples, rules.max_samples)

    def refuse(reason: str) -> Verdict:
        return Verdict(Outcome.REFUSE, kind, reason)

    if update.device != device:
        return refuse(f"device {update.device!r} does not match its topic ({device!r})")
    known = ledger.known_update(update.update_id)
    if known == "accepted":
        return Verdict(Outcome.DUPLICATE, kind, DUPLICATE)
    if known == UNCOMMITTED:
        return Verdict(Outcome.IN_FLIGHT, kind, UNCOMMITTED)
    if known is not None:
        return refuse(f"replay of update id {update.update_id.hex()[:12]} (first refused: {known})")
    if open_round is None:
        if closing is not None and update.round == closing:
            return refuse(f"round {closing} is closing: its updates are already aggregated")
        return refuse("no round is open")
    if kind == "eval":
        if open_round.mode != "eval":
            return refuse("an evaluation report, but no evaluation is open")
        if update.base_version != open_round.base_version:
            return refuse(f"evaluation of {update.base_version.hex()[:12]}, not of the current model")
        if _open_task(ledger, update.round, device, "eval") is None:
            return refuse(f"{device} has no open evaluation task in round {update.round}")
        return Verdict(Outcome.ACCEPT, kind, samples=samples)
    if open_round.mode == "eval":
        return refuse("training updates are not taken while the final model is evaluated")
    if samples == 0:
        return refuse("zero samples: nothing to weight the update by")
    if not math.isfinite(norm) or norm > rules.norm_bound:
        return refuse(f"update norm {norm:.4g} exceeds the bound {rules.norm_bound:g}")
    if rules.mode == "sync":
        if update.round != open_round.number:
            return refuse(f"round {update.round} is not the open round {open_round.number}")
        if update.base_version != open_round.base_version:
            return refuse(
                f"base version {update.base_version.hex()[:12]} is not the round's {open_round.base_version.hex()[:12]}"
            )
        if _open_task(ledger, update.round, device, "train") is None:
            return refuse(f"{device} has no open task in round {update.round}")
        return Verdict(Outcome.ACCEPT, kind, samples=samples)
    base_seq = ledger.model_seq(update.base_version)
    current_seq = ledger.model_seq(current_version)
    if base_seq is None or current_seq is None:
        return refuse(f"base version {update.base_version.hex()[:12]} is unknown")
    staleness = current_seq - base_seq
    if staleness > rules.max_staleness:
        return refuse(f"{staleness} versions stale (max {rules.max_staleness})")
    task = _open_task(ledger, update.round, device, "train")
    if task is None:
        return refuse(f"{device} has no open task from round {update.round}")
    if update.base_version != task.base_version:
        # The base decides the staleness weight: a device may not claim a newer one than it was given.
        return refuse(
            f"base version {update.base_version.hex()[:12]} is not its task's {task.base_version.hex()[:12]}"
        )
    return Verdict(Outcome.ACCEPT, kind, weight_factor=(1.0 + max(0, staleness)) ** -0.5, samples=samples)
