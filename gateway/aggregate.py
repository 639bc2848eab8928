"""Streaming sparse aggregation: fold each update into running sums as it arrives.

Memory is one float64 buffer for the whole model (``sums`` holds a view of
it per trainable tensor), whatever the number of devices: an update's kept
entries, all tensors at once as one sparse vector (``Update.flat``), are
added at their positions (unique, so a plain fancy-index add is exact; one
numpy add per update instead of one per tensor) and its weight
(its bounded sample count, times a staleness factor in asynchronous mode)
is added to the total. Only a buffered strategy (or the anomaly detector) makes it
keep each delta as well, sparse as it arrived.

Under differential privacy (``uniform``) every update weighs 1, whatever
samples it claims (one device must move the sum by at most the clip), and
the bits of adaptive clipping are summed as bit - 1/2; the privacy budget
(privacy/budget.py) turns the sums into the noised mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edge_runtime import wire
from edge_runtime.wire.update import layout_for

from .claims import bounded_metrics, median_range, plausible_range
from .strategies.base import ClientDelta, RoundInput, Weights
from .strategies.clipping import clip_factor


def update_norm(update: wire.Update) -> float:
    """L2 norm of the delta an update stands for, over all its tensors (in float64, as the sums are kept)."""
    values = update.entries()[1].astype(np.float64)
    return math.sqrt(float(values @ values))


class StreamingAggregate:
    def __init__(
        self,
        sizes: Mapping[int, int],
        keep_updates: bool = False,
        clip_norm: float | None = None,
        uniform: bool = False,
        range_keys: Mapping[int | str, int] | None = None,
    ) -> None:
        self.sizes = dict(sizes)
        # A device may name a layer's output by tensor index or by name: both map to the index here, and any
        # other key is dropped, so a liar cannot file a report of its own beside the others' median (nor lower
        # ``range_reporters`` with a made-up key). None: keys as given (tests of the sums alone).
        self.range_keys = range_keys
        self.uniform = uniform
        self.below = 0.0  # sum of (within clip ? 1 : 0) - 1/2 over the updates that said
        self.layout = layout_for(self.sizes)
        # float64: a round sums thousands of weighted updates; float32 would lose the small ones' low bits.
        self.flat = np.zeros(self.layout.total, np.float64)
        self.sums: Weights = {t: self.flat[self.layout.offset[t] : self.layout.offset[t] + n] for t, n in sizes.items()}
        self.weight = 0.0
        self.count = 0
        self.keep_updates = keep_updates
        self.clip_norm = clip_norm
        self.updates: list[ClientDelta] = []
        self.excluded: set[str] = set()  # devices whose updates were taken out again (exclude)
        self.rescaled: set[str] = set()  # devices whose kept updates were scaled down (rescale)
        self.activation_reports: dict[int | str, list[tuple[float, float]]] = {}  # per tensor, one per device
        self.metric_sums: dict[str, float] = {}
        self.metric_weight: dict[str, float] = {}

    def add(
        self,
        update: wire.Update,
        weight_factor: float = 1.0,
        norm: float | None = None,
        samples: int | None = None,
        take_ranges: bool = True,
    ) -> None:
        """Fold one update in, weighed by ``samples`` (its bounded claim; default the claim itself) times
        ``weight_factor``; ``norm`` (when the caller already has it) saves a pass for clipping; its activation
        ranges count only when its task asked for them (``take_ranges``)."""
        samples = update.samples if samples is None else samples
        weight = 1.0 if self.uniform else samples * weight_factor
        if self.uniform and update.below_clip is not None:
            self.below += (1.0 if update.below_clip else 0.0) - 0.5
        positions, values32 = update.flat(self.layout)
        values = values32.astype(np.float64)
        scale = 1.0
        if self.clip_norm:
            if norm is None:
                norm = math.sqrt(float(values @ values))
            scale = clip_factor(norm, self.clip_norm)
        self.flat[positions] += (weight * scale) * values
        self.weight += weight
        self.count += 1
        if self.keep_updates:  # sparse, as it arrived (clipped): never densified one by one
            entries, at = {}, 0
            for t in update.tensors:
                entries[t.tensor] = (np.asarray(t.indices), scale * values[at : at + t.nnz])
                at += t.nnz
            self.updates.append(ClientDelta(update.device, samples, entries, weight))
        if take_ranges:
            self._add_ranges(update.activation_ranges)
        for name, value in bounded_metrics(update.metrics, samples).items():
            self.metric_sums[name] = self.metric_sums.get(name, 0.0) + samples * value
            self.metric_weight[name] = self.metric_weight.get(name, 0.0) + samples

    def _add_ranges(self, ranges: Mapping[int | str, tuple[float, float]]) -> None:
        """One report per layer per update: the first plausible one under any of the layer's keys."""
        taken: set[int | str] = set()
        for name, (lo, hi) in ranges.items():
            key = name if self.range_keys is None else self.range_keys.get(name)
            if key is None or key in taken or not plausible_range(lo, hi):
                continue
            taken.add(key)
            self.activation_reports.setdefault(key, []).append((lo, hi))

    def exclude(self, devices: set[str]) -> list[str]:
        """Take the kept updates of ``devices`` out of the sums (the anomaly detector's verdict: recorded, not
        counted); each one once, however often this is called. Returns the devices taken out now."""
        out = []
        for u in self.updates:
            if u.device in devices and u.device not in self.excluded:
                for t, (idx, values) in u.entries.items():
                    self.sums[t][idx] -= u.weight * values
                self.weight -= u.weight
                self.excluded.add(u.device)
                out.append(u.device)
        self.updates = [u for u in self.updates if u.device not in self.excluded]
        if not self.updates:
            self.weight = 0.0
            for s in self.sums.values():
                s[:] = 0.0
        return out

    def rescale(self, factors: Mapping[str, float]) -> None:
        """Scale the kept updates of some devices by a factor in (0, 1] in the sums (the anomaly detector's clipping
        to the round's median norm); each one once, however often this is called. O(their nnz)."""
        for u in self.updates:
            f = factors.get(u.device)
            if f is None or u.device in self.rescaled:
                continue
            for t, (idx, values) in u.entries.items():
                self.sums[t][idx] -= (1.0 - f) * u.weight * values
                u.entries[t] = (idx, f * values)
            self.rescaled.add(u.device)

    def round_input(self) -> RoundInput:
        mean = {t: (s / self.weight if self.weight > 0 else s.copy()) for t, s in self.sums.items()}
        return RoundInput(mean, list(self.updates))

    def range_reporters(self) -> int:
        """How many devices' reports the least-reported tensor's median is taken over (0: no ranges)."""
        return min((len(reports) for reports in self.activation_reports.values()), default=0)

    def activation_ranges(self) -> dict[int | str, tuple[float, float]]:
        """The median of the devices' activation ranges, per tensor: one device's report cannot move it."""
        return {name: median_range(reports) for name, reports in self.activation_reports.items()}

    def metrics(self) -> dict[str, float]:
        return {name: s / self.metric_weight[name] for name, s in self.metric_sums.items()}
