"""SecAgg+'s sparse communication graph (Bell, Bonawitz, Gascon, Lepoint and Raykova 2020).

Each device shares its secrets with, and masks against, only its ``degree``
neighbours rather than everyone: a Harary graph over a random permutation of
the session's indices, so its cost grows as log n and not n. The
permutation comes from a seed the gateway announces before any key exists,
so every device computes its own neighbours and checks the gateway's list
against them: a gateway cannot choose whom a device's secrets go to.
"""

from __future__ import annotations

import hashlib

import numpy as np


def neighbours(count: int, degree: int, seed: bytes) -> dict[int, list[int]]:
    """index (1..count) -> its neighbours' indices, sorted; ``degree`` is clamped to count - 1 and made even
    (a Harary graph links each node to degree/2 on either side of the ring)."""
    if count < 1:
        raise ValueError("a session needs at least one device")
    degree = min(degree, count - 1)
    half = (degree + 1) // 2
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(b"tinyfed secagg graph" + seed).digest(), "<u4"))
    ring = [int(i) + 1 for i in rng.permutation(count)]
    out: dict[int, set[int]] = {i: set() for i in ring}
    for position, node in enumerate(ring):
        for step in range(1, half + 1):
            for other in (ring[(position + step) % count], ring[(position - step) % count]):
                if other != node:
                    out[node].add(other)
    return {i: sorted(v) for i, v in sorted(out.items())}


def holders(count: int, degree: int, seed: bytes, index: int) -> list[int]:
    """Who holds shares of ``index``'s secrets: its neighbours and itself."""
    return sorted([index, *neighbours(count, degree, seed)[index]])
