"""FedAvg (McMahan et al., 2017): the new weights are the old plus the sample-weighted mean delta."""

from __future__ import annotations

from .base import Strategy


class FedAvg(Strategy):
    name = "fedavg"
