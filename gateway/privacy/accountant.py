"""The privacy accountant: the ledger's entries composed by dp-accounting into (epsilon, delta).

One entry per closed round (``LedgerEntry``). For ``central-dp`` it is the
event DP-FedAvg's analysis names: each eligible device took part with
probability q, independently (Poisson sampling), and the released sum of
clipped updates carried Gaussian noise of stddev z x clip, so the round is
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` for add-or-remove-one-device
neighbours. Adaptive clipping's noised count of bits is part of the same
Gaussian: z is the multiplier of the two together (``mechanism.py``).

For ``local-dp`` each update a device sends is its own Gaussian mechanism:
clipped to C, noise of stddev z x C, and any two data sets of that device
may move the clipped vector by 2C, so one update is ``GaussianDpEvent(z / 2)``
and a device's guarantee composes the updates it was asked for (a task is
counted whether or not its update arrived). No sampling amplifies it: the
gateway knows whom it asked.

Entries that share (mode, q, z) are composed as one ``SelfComposedDpEvent``,
so an accountant over a thousand rounds costs what one over a few does.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LedgerEntry:
    """A round's privacy event, written in the transaction that closes the round."""

    round: int
    mode: str  # central-dp | local-dp | distributed-dp (secure aggregation's summed Skellam shares)
    population: int  # eligible devices when the round opened
    sampling_rate: float  # q (central-dp); 1 for local-dp, where nothing is amplified
    clip: float  # the L2 bound of the round's updates
    noise_multiplier: float  # z, what the accountant composes
    update_noise: float  # the multiplier of the noise on the sum itself (below z with adaptive clipping)
    participants: int  # updates counted (central-dp) or tasks sent (local-dp)
    next_clip: float  # the clip of the next round (adaptive clipping moves it)
    recorded: float = 0.0  # unix seconds

    @property
    def key(self) -> tuple[str, float, float]:
        return (self.mode, self.sampling_rate, self.noise_multiplier)


class _QuietOrders(logging.Filter):
    """dp-accounting's RDP accountant warns, at every call, that a few fractional orders near 1 did not converge
    and were left out (the bound holds without them); said once per process is enough."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to converge" not in record.getMessage():
            return True
        if _QuietOrders.said:
            return False
        _QuietOrders.said = True
        return True


logging.getLogger("absl").addFilter(_QuietOrders())


def _event(mode: str, sampling_rate: float, noise_multiplier: float) -> Any:
    import dp_accounting

    if mode == "local-dp":
        return dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    if mode == "distributed-dp" and sampling_rate >= 1.0:
        # Secure aggregation's Skellam noise, accounted as the Gaussian of equal variance (docs/secagg.md).
        return dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))


class Accountant:
    """(epsilon at ``delta``) of a multiset of round events, by dp-accounting's RDP or PLD accountant."""

    def __init__(self, kind: str = "rdp", delta: float = 1e-5) -> None:
        if kind not in ("rdp", "pld"):
            raise ValueError(f"accountant {kind!r} is not rdp or pld")
        self.kind = kind
        self.delta = delta
        self._cache: dict[tuple[tuple[tuple[str, float, float], int], ...], float] = {}

    def _new(self) -> Any:
        import dp_accounting

        if self.kind == "pld":
            return dp_accounting.pld.PLDAccountant()
        return dp_accounting.rdp.RdpAccountant()

    def epsilon(self, events: Counter[tuple[str, float, float]] | Iterable[tuple[str, float, float]]) -> float:
        """Epsilon after composing ``events`` ((mode, q, z) -> count), 0 for none."""
        counts = events if isinstance(events, Counter) else Counter(events)
        key = tuple(sorted((k, n) for k, n in counts.items() if n > 0))
        if not key:
            return 0.0
        if key not in self._cache:
            accountant = self._new()
            for (mode, q, z), n in key:
                accountant.compose(_event(mode, q, z), n)
            self._cache[key] = float(accountant.get_epsilon(self.delta))
        return self._cache[key]

    def ledger_epsilon(self, entries: Iterable[LedgerEntry]) -> float:
        return self.epsilon(Counter(e.key for e in entries))


def rounds_left(
    accountant: Accountant, spent: Counter[tuple[str, float, float]], next_event: tuple[str, float, float],
    epsilon: float, limit: int = 1_000_000,
) -> int:
    """How many more rounds of ``next_event`` keep the accountant within ``epsilon`` (at most ``limit``)."""

    def fits(n: int) -> bool:
        return accountant.epsilon(spent + Counter({next_event: n})) <= epsilon

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return limit if fits(limit) else _search(fits, low, limit)
    return _search(fits, low, high)


def _search(fits: Any, low: int, high: int) -> int:
    """The largest n in [low, high) with fits(n), given fits(low) and not fits(high)."""
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low
