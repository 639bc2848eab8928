"""Each device's update directions across rounds, against the direction the federation has been moving.

A label-flipping or backdoor attacker changes one update's norm, its
direction within one round and its clean loss too little for the per-round
scores (scores.py) to see among honest non-IID devices, which differ widely
round by round. What gives a coordinated attacker away is that it keeps
pushing *its own* way round after round, while an honest device, however
skewed its data, mostly helps the model the federation is building. So per
device the detector keeps the history of its update directions, and compares
it with the federation's own history (FoolsGold, Fung et al. 2020, compares
devices' histories with each other; that was measured here and did not
separate: attackers' histories were no more alike than honest non-IID
devices', see docs/robustness.md).

History: h <- decay x h + u / |u| at every update (every round counts alike,
however large the update; older rounds fade with ``decay``). The federation's
history is the same over the mean of the round's *counted* updates' unit
directions (flagged and quarantined ones left out). Both are kept as a
*count sketch* of ``dim`` floats: coordinate g of the model goes to bucket
h(g) with a sign s(g), both fixed hashes, so sketching a sparse update costs
O(its nnz) and the inner product of two sketches estimates that of the two
histories (error about 1/sqrt(dim) of their norms); a model with at most
``dim`` trainable parameters is kept exactly (the identity map). Memory:
``dim`` x 4 bytes per device ever scored (16 KB at dim 4096), whatever the
model's size; at each close, one cosine per update of the round, O(n x dim).
The history lives in the gateway's memory: a restart starts it afresh
(``min_history`` rounds before it flags again).

Flagged: a device with at least ``min_history`` rounds of history whose
history's cosine with the federation's is below ``min_cosine`` *and* more than
``threshold`` robust sd below the round's median cosine (the honest majority
sets the median and the spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..strategies.base import ClientDelta
from .scores import robust_z

HASH_A = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multipliers (Fibonacci hashing): fixed, so every sketch
HASH_B = np.uint64(0xC2B2AE3D27D4EB4F)  # the gateway makes is comparable with every other


@dataclass(frozen=True)
class HistoryScore:
    device: str
    rounds: int  # rounds its history holds
    cosine: float  # its history's cosine with the federation's (nan: no history yet)
    z: float  # robust sd below the round's median cosine (positive: further below)
    flagged: bool
    reason: str


class History:
    def __init__(self, sizes: dict[int, int], dim: int = 4096, decay: float = 0.8) -> None:
        if dim < 16:
            raise ValueError(f"the history's dim must be >= 16, got {dim}")
        self.offsets: dict[int, int] = {}
        total = 0
        for t in sorted(sizes):
            self.offsets[t] = total
            total += sizes[t]
        self.exact = total <= dim  # a small model is kept as it is, no hashing
        self.dim = total if self.exact else dim
        self.decay = decay
        self.sketches: dict[str, np.ndarray] = {}  # device -> its history (float32, dim)
        self.rounds: dict[str, int] = {}  # how many rounds each device's history holds
        self.fleet = np.zeros(self.dim, np.float64)  # the federation's history
        self._seen: dict[str, int] = {}  # the last round each device was last added in
        self._round = -1  # the last round added: a re-judged round is not added twice

    def _place(self, tensor: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = np.asarray(idx, np.uint64) + np.uint64(self.offsets.get(tensor, 0))
        if self.exact:
            return g.astype(np.int64), np.ones(g.size)
        with np.errstate(over="ignore"):
            bucket = ((g * HASH_A) >> np.uint64(33)) % np.uint64(self.dim)
            sign = ((g * HASH_B) >> np.uint64(63)).astype(np.float64) * 2.0 - 1.0
        return bucket.astype(np.int64), sign

    def sketch(self, update: ClientDelta) -> np.ndarray:
        """The update scaled to unit norm, sketched: O(nnz)."""
        out = np.zeros(self.dim, np.float64)
        sq = sum(float(v @ v) for _, v in update.entries.values())
        if sq <= 0:
            return out
        for t, (idx, values) in update.entries.items():
            bucket, sign = self._place(t, idx)
            np.add.at(out, bucket, sign * values)
        return out / math.sqrt(sq)

    def add_round(self, round_: int, updates: list[ClientDelta], counted: set[str]) -> bool:
        """Fold one round's updates into their devices' histories, and the counted ones' mean direction into
        the federation's; False (nothing done) when this round, or a later one, was added already."""
        if round_ <= self._round:
            return False
        self._round = round_
        fleet = np.zeros(self.dim, np.float64)
        n = 0
        for u in updates:
            s = self.sketch(u)
            if u.device in counted:
                fleet += s
                n += 1
            h = self.sketches.get(u.device)
            # a device that sat rounds out fades as if those rounds were empty
            fade = self.decay ** (round_ - self._seen.get(u.device, round_ - 1))
            self.sketches[u.device] = (s if h is None else fade * h + s).astype(np.float32)
            self.rounds[u.device] = self.rounds.get(u.device, 0) + 1
            self._seen[u.device] = round_
        self.fleet = self.decay * self.fleet + (fleet / n if n else fleet)
        return True

    def cosine(self, device: str) -> float:
        h = self.sketches.get(device)
        norms = float(np.linalg.norm(self.fleet)) * (float(np.linalg.norm(h)) if h is not None else 0.0)
        if h is None or norms == 0.0:
            return math.nan
        return float(h.astype(np.float64) @ self.fleet) / norms

    def score(self, devices: list[str], threshold: float, min_cosine: float, min_history: int) -> list[HistoryScore]:
        """Each of ``devices`` (this round's) against the federation's history, in the order given."""
        cosines = np.array([self.cosine(d) for d in devices])
        known = np.isfinite(cosines)
        z = np.zeros(len(devices))
        if known.sum() >= 3:
            z[known] = -robust_z(cosines[known])
        out = []
        for i, d in enumerate(devices):
            rounds = self.rounds.get(d, 0)
            flagged = bool(known[i] and rounds >= min_history and cosines[i] < min_cosine and z[i] > threshold)
            reason = (f"its updates over {rounds} rounds point away from the federation's (history cosine "
                      f"{cosines[i]:.2f} < {min_cosine:g}, {z[i]:.1f} robust sd below the round's)") if flagged else ""
            out.append(HistoryScore(d, rounds, float(cosines[i]), float(z[i]), flagged, reason))
        return out

    def forget(self, device: str) -> None:
        """A released device starts a new history (the operator vouched for it)."""
        self.sketches.pop(device, None)
        self.rounds.pop(device, None)
        self._seen.pop(device, None)
