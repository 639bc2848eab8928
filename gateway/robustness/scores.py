"""Per-update anomaly scores for one round, from the round's own robust statistics. Pure: numpy in, scores out.

Two scores per update, each against a statistic that the honest majority
sets and a minority cannot move far:

- norm: log of the update's L2 norm, as a robust z-score against the round's
  median and MAD (scaled by 1.4826, the normal's). Flagged when it is above
  ``threshold`` *and* the norm is more than ``norm_ratio`` times the round's
  median: only the large side counts (an update scaled up, or noise), and
  honest devices with more data than most send larger updates (up to 1.7x
  the median in the byzantine benchmark), which the ratio lets through;
- cosine: the update's cosine with the round's robust reference, the
  coordinate median over the senders of each coordinate of the round's
  sparse updates, times senders / n (so a coordinate few sent weighs
  little). Flagged below ``min_cosine``: the update points away from where
  the majority goes (a sign flip; random noise half the time). Its robust
  z-score below the round's median cosine is recorded, not flagged on: honest
  non-IID devices fall 3 to 4.6 robust sd below it now and then.

Cost: the updates are kept sparse (12 bytes per kept entry); at the close,
the reference is one [n x union] median (O(n x union log n)) and the
scores one pass over the kept entries, O(sum of nnz), plus sorting n
values. The norm itself is computed as each update arrives (admission
needs it anyway). Non-IID honest devices do point elsewhere: the MAD
scale absorbs the round's usual spread, and the reliability (reliability.py)
asks for repeated flags before it quarantines anyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..strategies.base import ClientDelta, robust_columns, union

MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal data
FLOOR = 1e-3  # the spread never counts as smaller than this (identical honest updates are not all anomalies)


@dataclass(frozen=True)
class Score:
    device: str
    norm: float
    cosine: float  # with the round's coordinate median (nan when the reference is zero)
    norm_z: float
    cosine_z: float
    flagged: bool
    reason: str  # why it is flagged ("" when it is not)
    loss_change: float | None = None  # on the hub's validation set, when there is one
    history_cosine: float | None = None  # the device's history against the federation's (history.py)
    dormant: float | None = None  # share of its squared mass on weights the hub's data never drives (validation.py)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD), the spread floored so a tight honest round does not flag its own noise."""
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * MAD_SCALE
    return (values - median) / max(mad, FLOOR, FLOOR * abs(median))


Sparse = dict[int, tuple[np.ndarray, np.ndarray]]  # tensor -> (coordinates, values)


def reference(updates: list[ClientDelta], sizes: dict[int, int], byzantine: int) -> Sparse:
    """The round's coordinate median on the union of sent coordinates, per tensor: (coordinates, values)."""
    out = {}
    for t in sizes:
        u = union(updates, t)
        out[t] = (u.index, robust_columns(u, len(updates), byzantine))
    return out


def cosine_with(update: ClientDelta, ref: Sparse, ref_norm: float) -> float:
    if ref_norm == 0.0:
        return math.nan
    dot = 0.0
    sq = 0.0
    for t, (idx, values) in update.entries.items():
        sq += float(values @ values)
        if t in ref:
            coords, rv = ref[t]
            pos = np.searchsorted(coords, idx)
            ok = pos < coords.size
            ok[ok] = coords[pos[ok]] == idx[ok]
            dot += float(values[ok] @ rv[pos[ok]])
    return dot / (math.sqrt(sq) * ref_norm) if sq > 0 else 0.0


def score_round(
    updates: list[ClientDelta],
    sizes: dict[int, int],
    threshold: float = 3.0,
    min_cosine: float = 0.0,
    norm_ratio: float = 2.0,
    loss_changes: list[float] | None = None,
    dormant: list[float] | None = None,
    dormant_share: float = 0.0,
) -> list[Score]:
    """Every update of one round scored against the others, in the order given; ``loss_changes`` (one per
    update: the loss on the hub's validation set after adding it, less before) flag an update whose change is
    positive and more than ``threshold`` robust sd above the round's; ``dormant`` (one per update: the share
    of its squared mass on weights the hub's data never drives) flag an update above ``dormant_share`` (> 0).
    The dormant share is judged against a fixed bound, not the round's spread: honest updates put (nearly)
    nothing there, so the round's median and MAD are zero and any spread would be the floor's."""
    n = len(updates)
    if n == 0:
        return []
    norms = np.array([math.sqrt(sum(float(v @ v) for _, v in u.entries.values())) for u in updates])
    ref = reference(updates, sizes, byzantine=1)
    ref_norm = math.sqrt(sum(float(v @ v) for _, v in ref.values()))
    cosines = np.array([cosine_with(u, ref, ref_norm) for u in updates])
    norm_z = robust_z(np.log(np.maximum(norms, 1e-12)))
    median_norm = float(np.median(norms))
    known = np.isfinite(cosines)
    cosine_z = np.zeros(n)
    if known.sum() >= 3:
        cosine_z[known] = -robust_z(cosines[known])  # positive: further below the round's usual agreement
    loss = np.array(loss_changes, np.float64) if loss_changes is not None else None
    loss_z = robust_z(loss) if loss is not None else None
    out = []
    for i, u in enumerate(updates):
        reasons = []
        if norm_z[i] > threshold and norms[i] > norm_ratio * median_norm:
            reasons.append(f"norm {norms[i]:.3g} is {norms[i] / median_norm:.1f}x the round's median, "
                           f"{norm_z[i]:.1f} robust sd above it")  # fmt: skip
        if known[i] and cosines[i] < min_cosine:
            reasons.append(f"cosine {cosines[i]:.2f} with the round's coordinate median < {min_cosine:g}")
        if loss is not None and loss_z is not None and loss[i] > 0 and loss_z[i] > threshold:
            reasons.append(f"raises the validation loss by {loss[i]:.3g}, {loss_z[i]:.1f} robust sd above the round's")
        if dormant is not None and dormant_share > 0 and dormant[i] > dormant_share:
            reasons.append(f"{dormant[i]:.0%} of its mass on weights the validation data never drives "
                           f"(> {dormant_share:g})")  # fmt: skip
        out.append(Score(u.device, float(norms[i]), float(cosines[i]), float(norm_z[i]), float(cosine_z[i]),
                         bool(reasons), "; ".join(reasons), float(loss[i]) if loss is not None else None,
                         dormant=float(dormant[i]) if dormant is not None else None))  # fmt: skip
    return out
