"""Give each simulated device its share: natural (by subject/engine) or label-skewed (Dirichlet)."""

from __future__ import annotations

import numpy as np

from .dataset import DataError, Dataset


def natural(ds: Dataset) -> dict[int, np.ndarray]:
    """One device per natural group id (HAR subject, C-MAPSS engine)."""
    if ds.groups is None:
        raise DataError(f"{ds.name}: has no natural groups; use a Dirichlet or IID split")
    return {int(g): np.flatnonzero(ds.groups == g) for g in np.unique(ds.groups)}


def iid(ds: Dataset, devices: int, seed: int = 0) -> dict[int, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(ds))
    return {i: np.sort(part) for i, part in enumerate(np.array_split(order, devices))}


def dirichlet(ds: Dataset, devices: int, alpha: float, seed: int = 0, min_size: int = 2) -> dict[int, np.ndarray]:
    """Non-IID label skew: each class is spread over devices by proportions ~ Dirichlet(alpha).

    Smaller alpha, stronger skew. Redrawn (seeded) until every device holds at
    least ``min_size`` samples, so no simulated device is empty.
    """
    if devices < 1 or alpha <= 0:
        raise DataError(f"dirichlet split needs devices >= 1 and alpha > 0 (got {devices}, {alpha})")
    if devices * min_size > len(ds):
        raise DataError(f"{len(ds)} samples cannot give {devices} devices {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(devices)]
        for c in np.unique(ds.y):
            idx = rng.permutation(np.flatnonzero(ds.y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha))) * len(idx)).astype(int)[:-1]
            for d, part in enumerate(np.split(idx, cuts)):
                shares[d].extend(part.tolist())
        if min(len(s) for s in shares) >= min_size:
            return {d: np.sort(np.array(s, np.int64)) for d, s in enumerate(shares)}
    raise DataError(f"no Dirichlet({alpha}) split gave every one of {devices} devices {min_size} samples")
