"""FedYogi (Reddi et al., 2021): v <- v - (1 - beta2) delta^2 sign(v - delta^2); v grows more cautiously."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)
