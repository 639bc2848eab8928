"""FedAdam (Reddi et al., 2021): v <- beta2 v + (1 - beta2) delta^2."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * d2
