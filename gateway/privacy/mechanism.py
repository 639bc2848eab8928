"""The Gaussian mechanism on a round's aggregate (central DP), and adaptive clipping's clip update.

DP-FedAvg (McMahan et al. 2018) with a fixed denominator: every update is
clipped to C (on the device before compression, and again here, so a device
that lies about its clip moves the sum by at most C all the same) and
weighs 1, whatever its sample count; the released mean is

    (sum of clipped updates + N(0, (z_update C)^2 I)) / (q N)

where q N is the expected number of participants of a round whose N eligible
devices were each sampled with probability q. Neither the real count nor any
single update is released.

Adaptive clipping (Andrew et al. 2021, geometric update): each device says
whether its update was within C; the gateway releases the share
b = (sum of (bit - 1/2) + N(0, s^2)) / (q N) + 1/2 and sets
C <- C exp(-eta (b - gamma)). Bits shifted by 1/2 move the sum by at most 1/2,
so releasing the sum and the count together is one Gaussian mechanism whose
multiplier z satisfies z^-2 = z_update^-2 + (2 s)^-2: the operator's z is
that total, and the update's own noise is z_update = (z^-2 - (2 s)^-2)^-1/2.

The noise of a round is drawn from a generator seeded by the store's secret
and the round number: a close retried after a crash or a full disk draws the
same noise and makes the same version, so no second draw of one round's
aggregate ever exists.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ..strategies.base import RoundInput, Weights


def count_stddev(configured: float, expected: float, noise_multiplier: float) -> float:
    """The noise on the count of bits: as configured, else expected participants / 20 (Andrew et al.'s advice),
    and never so small that the update's own share of the noise budget would be unbounded."""
    chosen = configured if configured > 0 else expected / 20
    return max(chosen, noise_multiplier)  # 2 s >= 2 z keeps z_update within 1.16 z


def update_noise_multiplier(noise_multiplier: float, count_noise: float | None) -> float:
    """The multiplier of the noise on the sum of updates, given the total ``z`` and the bits' noise (None: none)."""
    if count_noise is None:
        return noise_multiplier
    rest = noise_multiplier**-2 - (2 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(f"count noise {count_noise} leaves nothing of noise multiplier {noise_multiplier}")
    return rest**-0.5


def round_generator(secret: bytes, round_: int) -> np.random.Generator:
    """The noise generator of one round: the same secret and round give the same draws."""
    seed = hashlib.sha256(secret + round_.to_bytes(8, "big")).digest()
    return np.random.default_rng(int.from_bytes(seed, "big"))


@dataclass(frozen=True)
class DpRelease:
    """What a central-DP close releases: the noised mean, and the clip of the next round."""

    round_input: RoundInput
    next_clip: float
    noisy_share: float | None  # the released share of updates within the clip (adaptive clipping), else None


def release(
    sums: Weights,
    below: float,
    clip: float,
    expected: float,
    update_noise: float,
    count_noise: float | None,
    rng: np.random.Generator,
) -> tuple[Weights, float | None]:
    """The noised mean of ``sums`` (the sum of clipped updates) over ``expected`` participants, and the
    noised share of updates within the clip (``below``: the sum of bit - 1/2; None without adaptive clipping).
    Noise is drawn in a fixed order (tensors by index, then the count), so a seeded generator repeats it."""
    denominator = max(expected, 1e-12)
    mean = {}
    for tensor in sorted(sums):
        total = sums[tensor]
        mean[tensor] = (total + rng.normal(0.0, update_noise * clip, total.shape)) / denominator
    share = None
    if count_noise is not None:
        share = (below + float(rng.normal(0.0, count_noise))) / denominator + 0.5
    return mean, share


def adapted_clip(clip: float, share: float, target_quantile: float, learning_rate: float) -> float:
    """Andrew et al.'s geometric step: a clip most updates fit in shrinks, one few fit in grows."""
    value = clip * math.exp(-learning_rate * (share - target_quantile))
    return float(np.float32(min(max(value, 1e-6), 1e6)))  # as the wire carries it (f32), within its bounds
