"""A device's reliability across rounds, and when it is quarantined. Pure.

reliability <- decay x reliability + (1 - decay) x (0 if flagged else 1),
starting at 1: one flag costs 1 - decay (0.3 by default) and is earned back
over a few clean rounds; repeated flags take it below ``quarantine_below``
(0.7 -> 0.49 -> 0.34 < 0.4: three flags in a row by default). A non-IID
honest device flagged once in a while is not quarantined; an attacker
flagged round after round is. A quarantined device is not selected, its
updates (of tasks given before) are recorded and not counted, and its
reliability stays as it was until the operator releases it
(``tinyfed gateway release``), which puts it back at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Reliability:
    device: str
    score: float = 1.0
    rounds: int = 0  # rounds it was scored in
    flags: int = 0  # of which flagged
    quarantined: bool = False
    reason: str = ""  # the last flag's reason, or why it is quarantined
    since: int = 0  # the round it was quarantined in (or released after)


def observe(prior: Reliability, flagged: bool, reason: str, round_: int, decay: float, below: float) -> Reliability:
    """The reliability after one scored round; quarantined once it falls below ``below`` (never when 0)."""
    if prior.quarantined:
        return replace(prior, rounds=prior.rounds + 1, flags=prior.flags + int(flagged))
    score = decay * prior.score + (1 - decay) * (0.0 if flagged else 1.0)
    quarantine = below > 0 and score < below
    why = reason if flagged else prior.reason
    if quarantine:
        why = f"reliability {score:.2f} < {below:g} after {prior.flags + 1} flags; last: {reason}"
    return Reliability(prior.device, score, prior.rounds + 1, prior.flags + int(flagged), quarantine, why,
                       round_ if quarantine else prior.since)  # fmt: skip


def released(prior: Reliability, round_: int, note: str) -> Reliability:
    return Reliability(prior.device, 1.0, prior.rounds, prior.flags, False, note, round_)
