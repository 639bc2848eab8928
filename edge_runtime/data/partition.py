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


def select_group(
    train: Dataset, test: Dataset, group: int, holdout: float, order: str = "random", seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Samples of one natural group: the first part trains, the held-out rest evaluates.

    ``order="random"`` (seeded) holds out a random share; ``"time"`` holds out
    the most recent samples. Time order is the realistic protocol on a live
    device, but on recordings ordered by activity (HAR) it makes the two
    halves hold different classes.
    """
    for ds in (train, test):
        if ds.groups is not None and (ds.groups == group).any():
            idx = np.flatnonzero(ds.groups == group)
            if order == "random":
                idx = np.random.default_rng(seed).permutation(idx)
            n_train = max(1, round(len(idx) * (1.0 - holdout)))
            if holdout > 0 and n_train >= len(idx):
                raise DataError(f"group {group} has {len(idx)} samples: too few to hold out {holdout:.0%}")
            evaluate = ds.subset(idx[n_train:], f"group {group} held out") if holdout > 0 else test
            return ds.subset(idx[:n_train], f"group {group}"), evaluate
    raise DataError(f"no samples of group {group} in {train.name} or {test.name}")


def device_share(ds: Dataset, shard: str, scheme: str = "iid", seed: int = 0) -> np.ndarray:
    """Sample indices of shard ``"i/n"`` under ``scheme`` (``iid`` or ``dirichlet:ALPHA``).

    Every device of a simulated fleet computes the same split from the same
    seed and keeps only its own part, so no data is ever exchanged.
    """
    try:
        index_text, count_text = shard.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError as exc:
        raise DataError(f"shard {shard!r}: expected 'i/n', for example '3/30'") from exc
    if not 0 <= index < count:
        raise DataError(f"shard {shard!r}: i must be in 0..n-1")
    if scheme == "iid":
        return iid(ds, count, seed)[index]
    if scheme.startswith("dirichlet:"):
        try:
            alpha = float(scheme.split(":", 1)[1])
        except ValueError as exc:
            raise DataError(f"partition {scheme!r}: expected dirichlet:ALPHA, for example dirichlet:0.5") from exc
        return dirichlet(ds, count, alpha, seed)[index]
    raise DataError(f"partition {scheme!r}: expected 'iid' or 'dirichlet:ALPHA'")


def hold_out(ds: Dataset, fraction: float, seed: int, fallback: Dataset) -> tuple[Dataset, Dataset]:
    """Train on most of ``ds``, evaluate on ``fraction`` of it; with ``fraction`` 0, evaluate on ``fallback``.

    Each sample's side is drawn from the seed and its position alone, so rows
    appended to a device's file later never move earlier rows from one side
    to the other: the held-out share stays the same samples as data grows.
    The share is therefore ``fraction`` on average, not exactly; with two or
    more samples each side gets at least one.
    """
    if fraction <= 0 or len(ds) < 2:
        return ds, fallback
    draw = np.random.default_rng(seed).random(len(ds))
    held = draw < fraction
    if not held.any():
        held[np.argmin(draw)] = True
    if held.all():
        held[np.argmax(draw)] = False
    return ds.subset(np.flatnonzero(~held)), ds.subset(np.flatnonzero(held), f"{ds.name} held out")
