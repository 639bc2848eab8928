"""Krum and Multi-Krum (Blanchard et al., 2017): keep the updates closest to their neighbours.

Each update's score is the sum of squared distances to its n - f - 2
nearest others, f being the number of Byzantine devices tolerated. Krum
takes the single best-scoring update; Multi-Krum averages the ``keep`` best.
Distances are exact on the union of the coordinates the round's updates
sent (an absent coordinate is zero in both, so it adds nothing): memory is
the updates kept sparse plus an [n x union] matrix and an n x n distance
matrix, never O(model x devices) unless every update is dense. The devices
picked are kept in ``chosen`` and recorded with the round (rounds.py).
"""

from __future__ import annotations

import numpy as np

from .base import RoundInput, Strategy, Weights, scatter, union


class Krum(Strategy):
    name = "krum"
    buffered = True

    def __init__(self, byzantine: int = 1, keep: int = 1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if byzantine < 0 or keep < 1:
            raise ValueError("krum: byzantine must be >= 0 and keep >= 1")
        self.byzantine, self.keep = byzantine, keep
        self.chosen: list[str] = []  # devices picked last round, for the record

    def scores(self, flat: np.ndarray) -> np.ndarray:
        n = flat.shape[0]
        sq = (flat * flat).sum(axis=1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
        neighbours = max(1, n - self.byzantine - 2)
        return np.array([np.sort(np.delete(dist[i], i))[:neighbours].sum() for i in range(n)])

    def aggregate(self, round_input: RoundInput) -> Weights:
        updates = round_input.updates
        if not updates:
            return round_input.mean
        unions = {t: union(updates, t) for t in round_input.mean}
        flat = np.concatenate([u.values for u in unions.values()], axis=1)
        if len(updates) == 1:
            best = np.array([0])
        else:
            best = np.argsort(self.scores(flat), kind="stable")[: min(self.keep, len(updates))]
        self.chosen = [updates[i].device for i in best]
        return {
            t: scatter(round_input.mean[t].size, u.index, u.values[best].mean(axis=0)) for t, u in unions.items()
        }


class MultiKrum(Krum):
    name = "multikrum"

    def __init__(self, byzantine: int = 1, keep: int = 3, server_lr: float = 1.0) -> None:
        super().__init__(byzantine, keep, server_lr)
