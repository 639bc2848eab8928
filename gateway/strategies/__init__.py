"""Aggregation strategies, one module each behind ``Strategy`` (base.py). ``make_strategy`` builds one by name."""

from __future__ import annotations

from typing import Any

from .base import ClientDelta, RoundInput, Strategy, Weights
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedmedian import FedMedian
from .fedprox import FedProx
from .fedyogi import FedYogi
from .krum import Krum, MultiKrum
from .trimmed_avg import FedTrimmedAvg

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, FedMedian, FedTrimmedAvg, Krum, MultiKrum)
}


def make_strategy(name: str, **params: Any) -> Strategy:
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"strategy {name}: {exc}") from exc


__all__ = ["STRATEGIES", "ClientDelta", "RoundInput", "Strategy", "Weights", "make_strategy"]
