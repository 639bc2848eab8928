"""Two per-device signals across rounds that one round's scores miss: an update kept at the norm bound, and
mass written on dormant weights a little at a time.

- At the bound: a scaling attacker scales its update to just under ``[rounds] norm_bound`` (the most weight
  admission lets through) in every round. The round's norm score (scores.py) asks for a robust z-score of the
  log-norm above ``threshold``, and in a round whose honest norms spread widely on the low side (devices with
  little data send small updates) the MAD is wide: in the digits benchmark at seed 9, scalers 5.9x the round's
  median sat 2.5 robust sd above it and passed, round after round, while honest devices with much data sat up
  to 4.1 sd above it (their rounds' spread was tighter) at under 2.9x. What no honest device did: send an
  update of at least 0.82 of the bound, in any round (14,000 honest updates, ten seeds). So a device whose
  last ``rounds`` updates were all at least ``bound_share`` (0.9) of the bound is flagged; one honest update
  that reaches it is not, and an update over the bound is refused at admission, so an honest device whose
  norms grow past the bound breaks its own run. A scaler that stays further under the bound is left to the
  norm score (docs/robustness.md). A round in which most updates sit at the bound adds to nobody's run: then
  the bound binds honest devices too (set at their DP clip, say).
- Dormant mass, accumulated: the dormant share (validation.py) is judged per round against a fixed bound
  (``dormant_share``). A backdoor attacker whose top-k picks put 0-5% of each update there passes every round
  while its trigger is learnt (digits, seed 5: backdoor success 0.98); honest updates put exactly 0 there
  whenever the hub's set drives every input their data drives (a weight whose input is zero gets a zero
  gradient). So per device the shares are also summed with decay (``decay`` x sum + share, the history's
  decay), and an update that writes there again (share > 0) while the sum is above the bound is flagged. An
  honest device that lights up an input the hub's set never does now and then is flagged only in the rounds
  it writes there, as before, and only once its writes add up.

Memory: an int and a float per device scored; O(n) per close. In memory only, as the history (history.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .scores import Score


@dataclass(frozen=True)
class PersistenceScore:
    device: str
    flagged: bool
    reason: str
    at_bound: int  # its last updates in a row at bound_share x the bound or more
    dormant_sum: float | None  # its decayed sum of dormant shares (None without a validation set)


def at_bound_reference(norm_bound: float, clip_norm: float) -> float:
    """The bound the at-bound run is judged against, or inf (the signal off). The detector scores updates as
    they are folded, after ``[rounds] clip_norm`` scaled them down: under a clip below the bound no update can
    show the bound, and one just under it would make every honest update above the clip look "at the bound".
    With a clip, a scaler's extra weight is clipped away anyway."""
    return math.inf if clip_norm > 0 else norm_bound


class Persistence:
    def __init__(self, bound: float, bound_share: float, rounds: int, decay: float, dormant_share: float) -> None:
        self.bound = bound
        self.bound_share = bound_share
        self.rounds = rounds
        self.decay = decay
        self.dormant_share = dormant_share
        self.at_bound: dict[str, int] = {}
        self.dormant: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._round = -1  # the last round added: a re-judged round is not added twice

    def add_round(self, round_: int, scores: list[Score]) -> bool:
        """Fold one round's scores in; False (nothing done) when this round, or a later one, was added already."""
        if round_ <= self._round:
            return False
        self._round = round_
        at = {sc.device for sc in scores
              if self.bound_share > 0 and math.isfinite(self.bound) and sc.norm >= self.bound_share * self.bound}
        # Most of a round at the bound says the bound binds everyone (an operator who set it at the devices' DP
        # clip, say), not that most devices attack: such a round adds to nobody's run, lest every device be
        # quarantined. Attackers are a minority by assumption (the median and trimmed mean assume it too).
        binding = 2 * len(at) > len(scores)
        for sc in scores:
            if not binding:  # a binding round neither adds to a run nor breaks one
                self.at_bound[sc.device] = self.at_bound.get(sc.device, 0) + 1 if sc.device in at else 0
            if sc.dormant is not None:
                fade = self.decay ** (round_ - self._seen.get(sc.device, round_ - 1))
                self.dormant[sc.device] = fade * self.dormant.get(sc.device, 0.0) + sc.dormant
            self._seen[sc.device] = round_
        return True

    def judge(self, scores: list[Score]) -> list[PersistenceScore]:
        """Each of this round's scores (added already) judged on its device's memory, in the order given."""
        out = []
        for sc in scores:
            reasons = []
            streak = self.at_bound.get(sc.device, 0)
            if self.bound_share > 0 and streak >= self.rounds:
                reasons.append(f"its last {streak} updates were all at {self.bound_share:g}x the norm bound "
                               f"({self.bound:g}) or more (this one {sc.norm:.3g})")  # fmt: skip
            total = self.dormant.get(sc.device) if sc.dormant is not None else None
            if (total is not None and sc.dormant is not None and self.dormant_share > 0 and sc.dormant > 0
                    and total > self.dormant_share and sc.dormant <= self.dormant_share):  # fmt: skip
                reasons.append(f"its dormant shares add up to {total:.3f} over its recent rounds (> "
                               f"{self.dormant_share:g}, decay {self.decay:g}); this one {sc.dormant:.1%}")  # fmt: skip
            out.append(PersistenceScore(sc.device, bool(reasons), "; ".join(reasons), streak, total))
        return out

    def forget(self, device: str) -> None:
        """A released device starts afresh (the operator vouched for it)."""
        self.at_bound.pop(device, None)
        self.dormant.pop(device, None)
        self._seen.pop(device, None)
