"""FedAdagrad (Reddi et al., 2021): v <- v + delta^2."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2
