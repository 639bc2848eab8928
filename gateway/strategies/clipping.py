"""Update-norm clipping: scale each device's delta to at most ``max_norm`` (L2 over all its tensors).

Applied as the gateway folds each update, before any strategy sees it, so
it composes with every strategy, streaming ones included; one outsized
update can then move the model no further than an honest one. (A *norm
bound* in validation refuses an update outright; clipping keeps it, scaled.)
"""

from __future__ import annotations

import math


def clip_factor(norm: float, max_norm: float | None) -> float:
    """The scale that brings ``norm`` down to ``max_norm`` (1.0 when within it or when clipping is off)."""
    if max_norm is None or max_norm <= 0 or norm <= max_norm or not math.isfinite(norm):
        return 1.0
    return max_norm / norm
