"""What an enrolled device may claim about itself, bounded by what the hub already knows.

Authentication says who sent an update, not whether its sender tells the
truth: a compromised but enrolled device can lie in every field it reports
about itself. Each such field is bounded here, so that a device moves the
model by at most the share an honest device of its declared size could:

- the sample count that weights its update: at most what its birth message
  declared, and at most ``[rounds] max_samples``;
- its metrics: only names the gateway knows, each clipped to its range;
- the activation ranges it reports for re-quantisation: only in rounds whose
  tasks asked for them (as each round's row recorded: the schedule, or
  ``range_settle`` while ranges move), one per layer per device whatever
  key names the layer, combined by the median across devices (one liar
  cannot move it), and moved by at most ``max_range_growth`` per version
  published since ranges were last taken, at most ``report_every`` of them
  (gateway/publisher.py ``range_growth``).

The median assumes most of a round's reporters are honest. Devices that are
most of them own it: the growth bound only slows them, and since a range
that moved far is asked for again, they can move it again the next round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import RoundRow

# name -> (lowest, highest) a device may report; any other name is dropped.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "eval_accuracy": (0.0, 1.0),
    "eval_f1": (0.0, 1.0),
    "eval_loss": (0.0, 1e4),
    "eval_samples": (0.0, math.inf),
    "train_loss": (0.0, 1e4),
}
ACTIVATION_LIMIT = 1e6  # no int8 tail has activations near this; a larger value is a lie or a fault


def bounded_samples(claimed: int, declared: int | None, cap: int) -> int:
    """The sample count an update is weighted by: what it claims, within its birth's declaration and the cap."""
    return max(0, min(claimed, cap, declared if declared is not None else cap))


def asks_for_report(round_: int, report_every: int) -> bool:
    """Whether the tasks of a round ask for evaluation metrics and activation ranges (always the first)."""
    return (round_ - 1) % report_every == 0


def row_asks_for_report(row: RoundRow, report_every: int) -> bool:
    """Whether a round's training tasks asked for reports, as its row recorded (the schedule for a row from a
    store that did not record it)."""
    return row.report if row.report is not None else asks_for_report(row.round, report_every)


def bounded_metrics(metrics: Mapping[str, float], samples: int) -> dict[str, float]:
    """Known metrics only, each clipped to its range (``eval_samples`` to the update's bounded samples)."""
    out = {}
    for name, value in metrics.items():
        bounds = METRIC_BOUNDS.get(name)
        if bounds is None or not math.isfinite(value):
            continue
        lo, hi = bounds
        out[name] = min(max(value, lo), float(samples) if name == "eval_samples" else hi)
    return out


def plausible_range(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and -ACTIVATION_LIMIT <= lo < hi <= ACTIVATION_LIMIT


def median_range(reports: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The coordinate-wise median of the devices' [min, max] reports for one tensor."""
    lows, highs = zip(*reports, strict=True)
    return _median(lows), _median(highs)


def _median(values: tuple[float, ...]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def limited_range(new: tuple[float, float], current: tuple[float, float], growth: float) -> tuple[float, float]:
    """Move a range toward ``new`` by at most a factor ``growth`` per side (ranges contain 0).

    A side at 0 (a ReLU's minimum) may open by at most ``growth - 1`` times the other side's width.
    """
    lo, hi = new
    cur_lo, cur_hi = min(current[0], 0.0), max(current[1], 0.0)
    width = max(cur_hi - cur_lo, 1e-6)
    hi = min(max(hi, cur_hi / growth), cur_hi * growth) if cur_hi > 0 else min(hi, width * (growth - 1))
    lo = max(min(lo, cur_lo / growth), cur_lo * growth) if cur_lo < 0 else max(lo, -width * (growth - 1))
    return lo, hi
