"""FedTrimmedAvg (Yin et al., 2018): per coordinate, drop the largest and smallest ``beta`` share, average the rest.

Unweighted, like the published definition, and on sparse updates: a
coordinate sent by k of the n updates is the mean of its k senders' values
less floor(beta n) at each end, scaled by k / n, when k > 2 floor(beta n);
otherwise the dense trimmed mean (absent = zero). base.robust_columns says why.

Memory: the round's updates kept sparse (12 bytes per kept entry), plus one
[n x union] matrix per tensor while it aggregates (union <= n x kept entries).
"""

from __future__ import annotations

import math

from .base import RoundInput, Strategy, Weights, robust_columns, scatter, union


class FedTrimmedAvg(Strategy):
    name = "fedtrimmedavg"
    buffered = True

    def __init__(self, beta: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if not 0 <= beta < 0.5:
            raise ValueError(f"fedtrimmedavg: beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def aggregate(self, round_input: RoundInput) -> Weights:
        n = len(round_input.updates)
        if n == 0:
            return round_input.mean
        cut = math.floor(self.beta * n)
        out = {}
        for t, m in round_input.mean.items():
            u = union(round_input.updates, t)
            out[t] = scatter(m.size, u.index, robust_columns(u, n, cut))
        return out
