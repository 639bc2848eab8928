"""A device's input to a session: the update at the announced coordinates, clipped, quantised, noised.

No index leaves the device: the gateway announced the coordinates (chosen
without looking at any one device's update), the device sends a value for
each, in order. What it does not send stays in its error-feedback
residual, as with top-k: the residual plus this round's delta is clipped
to the session's L2 bound (the sum, so feedback never pushes what is sent
past it), the values at the coordinates are divided by the step and
rounded stochastically (unbiased), and the rounding error goes back into
the residual. The noise share is drawn from the OS's entropy and never fed
back: the gateway knows nothing that predicts it.
"""

from __future__ import annotations

import secrets

import numpy as np

from ..wire.secagg import SecAggSetup
from .field import skellam, stochastic_round


class SparseInput:
    """The residual per tensor, across rounds; ``prepare`` computes an input and the residual it leaves,
    ``commit`` keeps that residual once the input is on its way."""

    def __init__(self, residual: dict[int, np.ndarray] | None = None) -> None:
        self.residual: dict[int, np.ndarray] = dict(residual or {})

    def prepare(
        self, delta: dict[int, np.ndarray], setup: SecAggSetup, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(integers to mask, one per coordinate; the residual after sending them)."""
        total = {t: d.astype(np.float64).ravel() + self.residual.get(t, 0.0) for t, d in delta.items()}
        missing = [t for t, _ in setup.coordinates if t not in total]
        if missing:
            raise ValueError(f"the session's coordinates name tensors {missing} this device does not train")
        norm = float(np.sqrt(sum(float(v @ v) for v in total.values())))
        if setup.clip > 0 and norm > setup.clip:
            total = {t: v * (setup.clip / norm) for t, v in total.items()}
        rng = rng or np.random.default_rng(secrets.randbits(128))
        parts = []
        for tensor, indices in setup.coordinates:
            values = total[tensor]
            if indices.size and int(indices[-1]) >= values.size:
                raise ValueError(f"coordinate {int(indices[-1])} is outside tensor {tensor} of {values.size}")
            scaled = values[indices] / setup.step
            if setup.levels:  # the session's bound on one value: what is above it stays in the residual
                scaled = np.clip(scaled, -setup.levels, setup.levels)
            rounded = stochastic_round(scaled, rng)
            values[indices] -= rounded * setup.step
            parts.append(rounded)
        sent = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        noise = skellam(setup.noise, sent.size, np.random.default_rng(secrets.randbits(128)))
        return sent + noise, {t: v.astype(np.float32) for t, v in total.items()}

    def commit(self, residual: dict[int, np.ndarray]) -> None:
        self.residual = residual
