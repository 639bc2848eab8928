"""What the round lifecycle asks of robustness: weights at intake, a verdict at each close, who is quarantined.

The verdict is computed once per closing round and kept until that close
lands (a close retried after a full disk must not judge, nor take updates
out, twice); the reliabilities it changes are written in the transaction
that closes the round (store.finish_round) and adopted in memory only then,
so a crash before that commit re-judges the rebuilt round from scratch.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..aggregate import StreamingAggregate
from ..store import Contribution, GatewayStore
from ..strategies.base import Weights
from .history import History
from .persistence import Persistence
from .reliability import Reliability, observe, released
from .scores import Score, score_round
from .settings import RobustnessSection
from .validation import ValidationLoss, dormant_shares

log = logging.getLogger(__name__)


@dataclass
class Judgement:
    """One closing round's judgement: a row per update, the reliabilities it moves, who was not counted."""

    round: int
    contributions: list[Contribution] = field(default_factory=list)
    reliabilities: list[Reliability] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    clipped: dict[str, float] = field(default_factory=dict)  # device -> the factor its counted update was scaled by


class Detector:
    def __init__(
        self, settings: RobustnessSection, store: GatewayStore, validation: ValidationLoss | None = None,
        norm_bound: float = math.inf,
    ) -> None:
        self.settings = settings
        self.store = store
        self.validation = validation
        self._lock = threading.Lock()
        self._reliability: dict[str, Reliability] = {r.device: r for r in store.reliabilities()}
        # The quarantined among them: each step asks whether one was released, and a look at every device's
        # reliability per step cost the round thread more with every device the federation ever scored.
        self._held: set[str] = {d for d, r in self._reliability.items() if r.quarantined}
        self._verdicts: dict[int, Judgement] = {}
        self.history: History | None = None  # each device's directions across rounds (history.py); memory only
        # each device's run of updates at the norm bound and its dormant mass over rounds (persistence.py); memory only
        self.persistence = Persistence(norm_bound, settings.bound_share, settings.min_history, settings.history_decay,
                                       settings.dormant_share)  # fmt: skip

    # -- intake (paho's thread) -------------------------------------------------------------------------------
    def weight(self, device: str) -> float:
        """The factor an update of ``device`` weighs by (times its samples): its reliability, when asked for."""
        if not self.settings.reliability_weights:
            return 1.0
        with self._lock:
            r = self._reliability.get(device)
        return r.score if r is not None else 1.0

    # -- the round thread -------------------------------------------------------------------------------------
    def quarantined(self) -> dict[str, str]:
        """Who is quarantined now, read from the store: a release by command (another process) counts at once."""
        current = self.store.quarantined()
        with self._lock:
            for device in [d for d in self._held if d not in current]:  # released by `tinyfed gateway release`
                r = self._reliability[device]
                self._adopt(next((x for x in self.store.reliabilities() if x.device == device), r))
                if self.history is not None:
                    self.history.forget(device)
                self.persistence.forget(device)
        return current

    def _adopt(self, r: Reliability) -> None:
        """Under the lock."""
        self._reliability[r.device] = r
        if r.quarantined:
            self._held.add(r.device)
        else:
            self._held.discard(r.device)

    def judge(self, round_: int, aggregate: StreamingAggregate, base: Callable[[], Weights] | None = None) -> Judgement:
        """Score the round's updates, take the flagged (when configured) and quarantined ones out of its sums."""
        verdict = self._verdicts.get(round_)
        if verdict is None:
            verdict = self._judge(round_, aggregate, base)
            self._verdicts[round_] = verdict
        aggregate.exclude(verdict.excluded)
        aggregate.rescale(verdict.clipped)
        return verdict

    def _judge(self, round_: int, aggregate: StreamingAggregate, base: Callable[[], Weights] | None) -> Judgement:
        s = self.settings
        updates = aggregate.updates
        quarantined = self.store.quarantined()
        verdict = Judgement(round_)
        scores = []
        if len(updates) >= s.min_updates:
            losses = dormant = None
            if self.validation is not None and base is not None:
                weights = base()
                losses = self.validation.changes(weights, updates, s.loss_step)
                if s.dormant_share > 0:
                    dormant = dormant_shares(self.validation.dormant(weights), updates)
            scores = score_round(updates, aggregate.sizes, s.threshold, s.min_cosine, s.norm_ratio, losses,
                                 dormant, s.dormant_share)  # fmt: skip
            if s.history:
                scores = self._with_history(round_, aggregate, scores, quarantined)
                scores = self._with_persistence(round_, scores)
        by_device = {sc.device: sc for sc in scores}
        with self._lock:
            known = dict(self._reliability)
        limit = s.clip_to_median * float(np.median([sc.norm for sc in scores])) if scores and s.clip_to_median else 0.0
        for u in updates:
            sc = by_device.get(u.device)
            out = u.device in quarantined or (sc is not None and sc.flagged and s.exclude_flagged)
            reason = sc.reason if sc is not None else ""
            if sc is not None and not out and limit > 0 and sc.norm > limit:
                verdict.clipped[u.device] = limit / sc.norm
                clip = f"clipped to {limit:.3g} ({s.clip_to_median:g}x the round's median norm; it was {sc.norm:.3g})"
                reason = "; ".join(x for x in (reason, clip) if x)
            if u.device in quarantined:
                reason = "; ".join(x for x in (reason, f"quarantined: {quarantined[u.device]}") if x)
            verdict.contributions.append(Contribution(
                u.device, sc.norm if sc else None, sc.cosine if sc else None, sc.norm_z if sc else None,
                sc.cosine_z if sc else None, bool(sc and sc.flagged), reason, not out,
                loss_change=sc.loss_change if sc else None,
            ))  # fmt: skip
            if out:
                verdict.excluded.add(u.device)
            if sc is not None:
                prior = known.get(u.device, Reliability(u.device))
                verdict.reliabilities.append(observe(prior, sc.flagged, sc.reason, round_, s.decay, s.quarantine_below))
        return verdict

    def _with_history(
        self, round_: int, aggregate: StreamingAggregate, scores: list[Score], quarantined: dict[str, str]
    ) -> list[Score]:
        """Fold the round into the devices' and the federation's histories and flag the devices whose history
        points away from the federation's (history.py); the federation's takes only the updates counted so far."""
        s = self.settings
        if self.history is None or self.history.offsets != History(aggregate.sizes, s.history_dim).offsets:
            self.history = History(aggregate.sizes, s.history_dim, s.history_decay)
        out_now = {sc.device for sc in scores if sc.flagged and s.exclude_flagged} | set(quarantined)
        counted = {sc.device for sc in scores} - out_now
        self.history.add_round(round_, aggregate.updates, counted)
        judged = self.history.score([sc.device for sc in scores], s.threshold, s.history_min_cosine, s.min_history)
        out = []
        for sc, h in zip(scores, judged, strict=True):
            reason = "; ".join(x for x in (sc.reason, h.reason) if x)
            out.append(replace(sc, flagged=sc.flagged or h.flagged, reason=reason, history_cosine=h.cosine))
        return out

    def _with_persistence(self, round_: int, scores: list[Score]) -> list[Score]:
        """Flag the devices whose updates sat at the norm bound, or whose dormant mass added up, across rounds."""
        self.persistence.add_round(round_, scores)
        out = []
        for sc, p in zip(scores, self.persistence.judge(scores), strict=True):
            reason = "; ".join(x for x in (sc.reason, p.reason) if x)
            out.append(replace(sc, flagged=sc.flagged or p.flagged, reason=reason))
        return out

    def closed(self, verdict: Judgement) -> None:
        """The round's close landed (its rows are committed): adopt the reliabilities it moved."""
        self._verdicts.pop(verdict.round, None)
        with self._lock:
            for r in verdict.reliabilities:
                before = self._reliability.get(r.device)
                if r.quarantined and not (before and before.quarantined):
                    log.warning("%s quarantined in round %d: %s", r.device, verdict.round, r.reason)
                self._adopt(r)
        flagged = [c.device for c in verdict.contributions if c.flagged]
        if flagged:
            log.warning("round %d: flagged %s", verdict.round, flagged)

    def forget(self, round_: int) -> None:
        self._verdicts.pop(round_, None)


def release(store: GatewayStore, device: str, note: str) -> Reliability:
    """Put a quarantined device back (reliability 1): the operator's command; raises KeyError when not quarantined."""
    current = {r.device: r for r in store.reliabilities()}
    r = current.get(device)
    if r is None or not r.quarantined:
        raise KeyError(device)
    new = released(r, r.since, note)
    store.save_reliability(new)
    return new
