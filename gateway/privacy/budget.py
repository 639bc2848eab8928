"""The federation's privacy budget, read from the ledger: what is spent, what is left, and each round's release.

``Rounds`` asks it, before each plan, for a ``PrivacyView`` (the next
round's clip; whether the budget has room for another round, or which
devices have none left under local DP) and, at each close, for the round's
noised aggregate and its ledger entry, which the store writes in the
transaction that closes the round. The view is computed once per close, not
per plan: the ledger only changes then (and, under local DP, when tasks are
given, which the policy itself excludes by the view it was handed).

Under local DP each device's tasks are counted from the store once, then
kept up as tasks are given (``gave``, from the plan's own record): reading
every task ever given at each plan that gave one made each step of an
asynchronous federation cost more with its history (66 ms at 100,000 tasks).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..aggregate import StreamingAggregate
from ..config import GatewayConfig, PrivacySection
from ..policy import PrivacyRules, PrivacyView
from ..store import GatewayStore, RoundRow
from ..strategies.base import RoundInput
from .accountant import Accountant, LedgerEntry, rounds_left
from .mechanism import adapted_clip, count_stddev, release, round_generator, update_noise_multiplier

log = logging.getLogger(__name__)
SECRET_KEY = "privacy_secret"


@dataclass(frozen=True)
class Spent:
    """The budget as ``gateway status`` shows it."""

    mode: str
    epsilon: float  # central: the federation's; local: the most any one device has spent
    target: float
    delta: float
    rounds_left: int  # central: rounds at the current settings; local: updates the most exposed device has left
    rounds: int  # ledger entries
    clip: float  # the next round's


class PrivacyBudget:
    """``distributed_noise``: under ``distributed-dp`` (secure aggregation, docs/secagg.md), ``[secagg]
    noise_multiplier``, the least noise a round's sum can carry (a sum of more devices than the threshold
    carries more); the next round is accounted at it, so the budget is never exceeded by a round that opens."""

    def __init__(self, settings: PrivacySection, store: GatewayStore, distributed_noise: float = 0.0) -> None:
        if settings.mode == "distributed-dp" and distributed_noise <= 0:
            raise ValueError("a distributed-dp budget needs [secagg] noise_multiplier > 0")
        self.distributed_noise = distributed_noise
        self.settings = settings
        self.store = store
        self.accountant = Accountant(settings.accountant, settings.delta)
        self._view: PrivacyView | None = None
        self._said: bool = False
        self._participations: dict[str, Counter[float]] | None = None  # local-dp: the store's, kept up (gave)

    @property
    def secret(self) -> bytes:
        """The seed of every round's noise: made at the first close, kept with the ledger (never shown)."""
        secret = self.store.get_meta(SECRET_KEY)
        if secret is None:
            secret = os.urandom(32).hex()
            self.store.set_meta(SECRET_KEY, secret)
        return bytes.fromhex(secret)

    @property
    def rules(self) -> PrivacyRules:
        s = self.settings
        return PrivacyRules(s.mode, s.sampling_rate, s.clip, s.noise_multiplier, s.adaptive_clip)

    @property
    def central(self) -> bool:
        return self.settings.mode == "central-dp"

    @property
    def distributed(self) -> bool:
        """Secure aggregation's distributed DP: one federation-wide budget, like central DP, spent by the sums."""
        return self.settings.mode == "distributed-dp"

    @property
    def federation_wide(self) -> bool:
        return self.central or self.distributed

    def next_event(self) -> tuple[str, float, float]:
        s = self.settings
        if self.distributed:
            return ("distributed-dp", 1.0, self.distributed_noise)
        return (s.mode, s.sampling_rate if self.central else 1.0, s.noise_multiplier)

    # -- before a plan ----------------------------------------------------------------------------------
    def view(self) -> PrivacyView:
        if self._view is None:
            self._view = self._compute_view()
            if self._view.exhausted and not self._said:
                spent = self.spent()
                log.warning(
                    "privacy budget: %.3f of epsilon %g spent (delta %g); one more round would exceed it, so no "
                    "training round opens", spent.epsilon, spent.target, spent.delta,
                )  # fmt: skip
                self._said = True
        return self._view

    def invalidate(self) -> None:
        """The ledger changed (a round closed): compute the view again at the next plan."""
        self._view = None

    def _compute_view(self) -> PrivacyView:
        s = self.settings
        ledger = self.store.ledger()
        clip = ledger[-1].next_clip if ledger and self.central else s.clip
        if self.federation_wide:
            spent = Counter(e.key for e in ledger)
            after = self.accountant.epsilon(spent + Counter({self.next_event(): 1}))
            return PrivacyView(clip, exhausted=after > s.epsilon)
        spent_devices = frozenset(
            device for device, counts in self._local_participations().items() if self._no_room(counts)
        )  # fmt: skip
        self._say_spent(spent_devices)
        return PrivacyView(clip, spent_devices=spent_devices)

    def _local_participations(self) -> dict[str, Counter[float]]:
        if self._participations is None:
            self._participations = self.store.local_participations()
        return self._participations

    def _no_room(self, counts: Counter[float]) -> bool:
        """Whether one more update at the configured noise would take a device past its budget."""
        s = self.settings
        return self._local_epsilon(counts + Counter({s.noise_multiplier: 1})) > s.epsilon

    def _say_spent(self, spent_devices: frozenset[str]) -> None:
        if spent_devices and not self._said:
            log.warning("privacy budget: %d device(s) have no room for another update (epsilon %g); they are not "
                        "asked again", len(spent_devices), self.settings.epsilon)  # fmt: skip
            self._said = True

    def gave(self, devices: Iterable[str], noise: float) -> None:
        """Local DP: training tasks at ``noise`` were just recorded (``dp_tasks``) for ``devices``: they count
        against those devices' budgets at the next plan, as a read of every task ever given would count them."""
        counts = self._local_participations()
        given = list(devices)
        for device in given:
            counts.setdefault(device, Counter())[noise] += 1
        view = self._view
        if view is None:
            return
        newly = {d for d in given if d not in view.spent_devices and self._no_room(counts[d])}
        if newly:  # only the devices just given a task can have run out (epsilon grows with every task)
            self._view = replace(view, spent_devices=view.spent_devices | newly)
            self._say_spent(self._view.spent_devices)

    def _local_epsilon(self, counts: Counter[float]) -> float:
        return self.accountant.epsilon(Counter({("local-dp", 1.0, z): n for z, n in counts.items()}))

    def epsilon(self) -> float:
        """Spent so far: central, the federation's; local, the most exposed device's."""
        if self.federation_wide:
            return self.accountant.ledger_epsilon(self.store.ledger())
        return max((self._local_epsilon(c) for c in self.store.local_participations().values()), default=0.0)

    def spent(self) -> Spent:
        s = self.settings
        ledger = self.store.ledger()
        clip = ledger[-1].next_clip if ledger and self.central else s.clip
        if self.federation_wide:
            spent = Counter(e.key for e in ledger)
            epsilon = self.accountant.epsilon(spent)
            left = rounds_left(self.accountant, spent, self.next_event(), s.epsilon)
        else:
            worst = max(self.store.local_participations().values(), key=self._local_epsilon, default=Counter())
            epsilon = self._local_epsilon(worst)
            spent_events = Counter({("local-dp", 1.0, z): n for z, n in worst.items()})
            left = rounds_left(self.accountant, spent_events, self.next_event(), s.epsilon)
        return Spent(s.mode, epsilon, s.epsilon, s.delta, left, len(ledger), clip)

    # -- at a close -------------------------------------------------------------------------------------
    def close(self, row: RoundRow, aggregate: StreamingAggregate, tasks: int) -> tuple[RoundInput | None, LedgerEntry]:
        """The round's release (None: the aggregate's own mean, as under local DP) and its ledger entry.

        Central DP: the sum of clipped updates plus Gaussian noise over the expected participants, from the
        round's own seeded generator, so a retried close releases the same thing. ``tasks``: tasks given."""
        s = self.settings
        if not self.central:
            entry = LedgerEntry(row.round, row.privacy, row.population, 1.0, row.clip, row.noise, row.noise, tasks,
                                row.clip)  # fmt: skip
            return None, entry
        expected = row.sampling_rate * row.population
        bits = count_stddev(s.clip_count_stddev, expected, row.noise) if s.adaptive_clip else None
        z_update = update_noise_multiplier(row.noise, bits)
        mean, share = release(aggregate.sums, aggregate.below, row.clip, expected, z_update, bits,
                              round_generator(self.secret, row.round))  # fmt: skip
        next_clip = row.clip
        if share is not None:
            next_clip = adapted_clip(row.clip, share, s.target_quantile, s.clip_learning_rate)
        entry = LedgerEntry(row.round, row.privacy, row.population, row.sampling_rate, row.clip, row.noise, z_update,
                            aggregate.count, next_clip)  # fmt: skip
        return RoundInput(mean, []), entry


def budget_of(config: GatewayConfig, store: GatewayStore) -> PrivacyBudget | None:
    """The federation's budget, or None with ``[privacy] mode = "off"`` (under ``distributed-dp``, at the noise
    of ``[secagg] noise_multiplier``)."""
    if not config.privacy.on:
        return None
    return PrivacyBudget(config.privacy, store, config.secagg.noise_multiplier if config.secagg.on else 0.0)
