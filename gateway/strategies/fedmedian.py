"""FedMedian (Yin et al., 2018): the coordinate-wise median of the devices' deltas, unweighted, on sparse updates.

The median of mostly-zero sparse updates is zero almost everywhere, so the
published (dense) median barely learns at 1% density. Here a coordinate is
the median over the updates that *sent* it, scaled by senders / n, when at
least 2 ``byzantine`` + 1 updates sent it (base.robust_columns says why);
a coordinate sent by fewer takes the dense median (absent = zero).

Memory: the round's updates kept sparse (12 bytes per kept entry), plus one
[n x union] matrix per tensor while it aggregates (union <= n x kept entries).
"""

from __future__ import annotations

from .base import RoundInput, Strategy, Weights, robust_columns, scatter, union


class FedMedian(Strategy):
    name = "fedmedian"
    buffered = True

    def __init__(self, byzantine: int = 1, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)
        if byzantine < 0:
            raise ValueError(f"fedmedian: byzantine must be >= 0, got {byzantine}")
        self.byzantine = byzantine

    def aggregate(self, round_input: RoundInput) -> Weights:
        n = len(round_input.updates)
        if n == 0:
            return round_input.mean
        out = {}
        for t, m in round_input.mean.items():
            u = union(round_input.updates, t)
            out[t] = scatter(m.size, u.index, robust_columns(u, n, self.byzantine))
        return out
