"""The gateway's side of secure aggregation (SecAgg+, docs/secagg.md): it learns the sum of a round's inputs, at
coordinates it chose before any input existed, and nothing about any one of them.

``choose_coordinates`` picks a round's coordinate set from the previous
aggregate (public: the published model moved there) plus a seeded random
share, never from a device's update. ``plan`` sizes the field and each
device's noise share. ``ServerSession`` is the round's state machine, pure
(no MQTT): each step takes the devices' answers and makes the next requests,
and ``result`` either recovers the sum or raises ``SecAggFailed``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.secagg import check_threshold, crypto, graph, shamir
from edge_runtime.secagg import field as gf
from edge_runtime.secagg.device import pairwise_sign
from edge_runtime.secagg.errors import SecAggFailed
from edge_runtime.wire.secagg import (
    SecAggAdvertise,
    SecAggCollect,
    SecAggKeys,
    SecAggMasked,
    SecAggReveal,
    SecAggSetup,
    SecAggShares,
    SecAggUnmask,
)
from gateway.privacy.accountant import LedgerEntry

Coordinates = list[tuple[int, np.ndarray]]


def choose_coordinates(
    sizes: dict[int, int], count: int, seed: bytes, previous: dict[int, np.ndarray] | None = None,
    random_share: float = 0.5,
) -> Coordinates:  # fmt: skip
    """``count`` coordinates over the tensors (tensor -> element count): the largest magnitudes of the previous
    aggregate for (1 - random_share) of them, the rest uniformly at random from a seed, so every coordinate is
    visited now and then (what error feedback holds back is sent eventually). Sorted per tensor."""
    flat_sizes = [(t, sizes[t]) for t in sorted(sizes)]
    total = sum(n for _, n in flat_sizes)
    count = max(1, min(count, total))
    offsets = np.cumsum([0] + [n for _, n in flat_sizes])
    chosen = np.zeros(total, bool)
    if previous:
        magnitude = np.concatenate([np.abs(previous.get(t, np.zeros(n))).ravel()[:n] for t, n in flat_sizes])
        top = round(count * (1.0 - random_share))
        if top > 0:
            chosen[np.argpartition(-magnitude, top - 1)[:top]] = True
    rng = np.random.default_rng(np.frombuffer(seed[:32].ljust(32, b"\0"), "<u4"))
    rest = np.flatnonzero(~chosen)
    chosen[rng.choice(rest, count - int(chosen.sum()), replace=False)] = True
    out: Coordinates = []
    for k, (tensor, _) in enumerate(flat_sizes):
        here = np.flatnonzero(chosen[offsets[k] : offsets[k + 1]])
        if here.size:
            out.append((tensor, here.astype(np.int64)))
    return out


@dataclass(frozen=True)
class FieldPlan:
    bits: int  # the field: the largest prime below 2^bits
    step: float  # quantisation step
    noise: float  # each device's Skellam mu, in steps
    sensitivity: float  # the L2 bound of one device's quantised input, in values (clip + rounding)
    noise_multiplier: float  # the sum's noise stddev over the sensitivity, with min_survivors devices
    levels: int = 0  # the devices clamp |value / step| to this (0: no clamp; the clip bounds each value)


def plan(
    devices: int, size: int, clip: float, input_bits: int = 8, noise_multiplier: float = 0.0,
    min_survivors: int = 1, value_bound: float = 0.0,
) -> FieldPlan:  # fmt: skip
    """The field and noise of a session. A coordinate of a vector clipped to ``clip`` is at most ``clip``, so it
    quantises to at most 2^(input_bits-1) - 1 steps; the field holds ``devices`` of those plus the noise at 12
    standard deviations without wrapping. Each device adds Skellam noise of variance 2 mu so that the sum of
    ``min_survivors`` shares has stddev ``noise_multiplier`` x the sensitivity (fewer survivors: no sum).

    ``value_bound`` > 0: each value is bounded by ``value_bound x clip / sqrt(size)`` instead (at most the clip),
    the devices clamp to it (``levels`` steps) and keep the rest in their residual. A clipped vector spread over
    ``size`` coordinates has values near clip / sqrt(size), far below the clip, so the step is that much finer
    at the same input bits, or as fine at fewer bits (and more coordinates in the same bytes)."""
    if clip <= 0:
        raise ValueError("secure aggregation needs a clip: the field's size is bounded by it")
    levels = (1 << (input_bits - 1)) - 1
    bound_value = min(clip, value_bound * clip / math.sqrt(max(1, size))) if value_bound > 0 else clip
    step = bound_value / levels
    sensitivity = clip + step * math.sqrt(size)  # stochastic rounding moves each value by less than a step
    sigma_steps = noise_multiplier * sensitivity / step
    mu = sigma_steps**2 / (2 * max(1, min_survivors)) if noise_multiplier > 0 else 0.0
    bound = devices * (levels + 1) + 12 * math.sqrt(2 * mu * devices)
    bits = max(gf.MIN_BITS, math.ceil(math.log2(2 * bound + 3)) + 1)
    if bits > gf.MAX_BITS:
        raise ValueError(f"{devices} devices at {input_bits} input bits need a field of {bits} bits (at most 32)")
    return FieldPlan(bits, step, mu, sensitivity, noise_multiplier, levels if value_bound > 0 else 0)


@dataclass
class SecAggResult:
    round: int
    sum: dict[int, tuple[np.ndarray, np.ndarray]]  # tensor -> (indices, sum of the survivors' values)
    survivors: list[str]
    dropped: list[str]  # selected devices whose input is not in the sum
    noise_multiplier: float  # the noise the sum carries over the sensitivity (0: none)


@dataclass
class ServerSession:
    """One round's session over ``devices`` (names, in index order 1..n)."""

    devices: list[str]
    round: int
    coordinates: Coordinates
    field_plan: FieldPlan
    clip: float
    degree: int
    threshold: int
    min_survivors: int
    deadline: int
    session: bytes = field(default_factory=lambda: os.urandom(16))
    graph_seed: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        self.index = {name: i for i, name in enumerate(self.devices, 1)}
        self.graph = graph.neighbours(len(self.devices), self.degree, self.graph_seed)
        holders = min(len(n) for n in self.graph.values()) + 1
        reason = check_threshold(self.threshold, holders)
        if reason is not None:
            raise ValueError(f"secagg: {reason}")
        self.size = sum(int(c.size) for _, c in self.coordinates)
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.ciphertexts: dict[int, dict[int, bytes]] = {}  # sender -> recipient -> ciphertext
        self.masked: dict[int, np.ndarray] = {}
        self.reveals: dict[int, SecAggReveal] = {}
        self.step = "advertise"

    # -- requests and answers, in order ------------------------------------------------------------------------

    def setups(self) -> dict[str, SecAggSetup]:
        fp = self.field_plan
        return {
            name: SecAggSetup(self.session, self.round, i, len(self.devices), self.degree, self.threshold,
                              self.graph_seed, fp.bits, fp.step, self.clip, fp.noise, self.coordinates, self.deadline,
                              fp.levels)
            for name, i in self.index.items()
        }  # fmt: skip

    def _from(self, name: str, session: bytes, index: int, step: str) -> int:
        if self.step != step:
            raise ValueError(f"secagg {step} answer from {name} at step {self.step}")
        if session != self.session:
            raise ValueError(f"secagg {step} answer from {name} names another session")
        if self.index.get(name) != index:
            raise ValueError(f"secagg {step} answer from {name} claims index {index}")
        return index

    def advertise(self, name: str, message: SecAggAdvertise) -> None:
        i = self._from(name, message.session, message.index, "advertise")
        self.keys[i] = (message.c_public, message.s_public)

    def key_lists(self) -> dict[str, SecAggKeys]:
        """Closes advertising: each device that advertised gets its advertised neighbours' keys."""
        self.step = "shares"
        return {
            name: SecAggKeys(self.session, [(j, *self.keys[j]) for j in self.graph[i] if j in self.keys])
            for name, i in self.index.items() if i in self.keys
        }  # fmt: skip

    def shares(self, name: str, message: SecAggShares) -> None:
        i = self._from(name, message.session, message.index, "shares")
        expected = {j for j in self.graph[i] if j in self.keys}
        if {j for j, _ in message.ciphertexts} != expected:
            raise ValueError(f"secagg shares from {name} are not addressed to its advertised neighbours")
        self.ciphertexts[i] = dict(message.ciphertexts)

    def collects(self) -> dict[str, SecAggCollect]:
        """Closes sharing: each device that shared gets the ciphertexts addressed to it by others that did."""
        self.step = "masked"
        return {
            name: SecAggCollect(self.session, [(j, self.ciphertexts[j][i]) for j in self.graph[i]
                                               if j in self.ciphertexts and i in self.ciphertexts[j]])
            for name, i in self.index.items() if i in self.ciphertexts
        }  # fmt: skip

    def masked_input(self, name: str, message: SecAggMasked) -> None:
        i = self._from(name, message.session, message.index, "masked")
        if i not in self.ciphertexts:
            raise ValueError(f"secagg masked input from {name}, which shared no keys")
        self.masked[i] = gf.unpack(message.values, self.size, self.field_plan.bits)

    def unmasks(self) -> dict[str, SecAggUnmask]:
        """Closes masked input: each survivor is told which of its neighbours survived and which dropped."""
        self.step = "reveal"
        if len(self.masked) < self.min_survivors:
            return {}
        out = {}
        for name, i in self.index.items():
            if i not in self.masked:
                continue
            mine = [j for j in self.graph[i] if j in self.ciphertexts and i in self.ciphertexts[j]]
            out[name] = SecAggUnmask(self.session, sorted([i, *(j for j in mine if j in self.masked)]),
                                     sorted(j for j in mine if j not in self.masked))  # fmt: skip
        return out

    def reveal(self, name: str, message: SecAggReveal) -> None:
        i = self._from(name, message.session, message.index, "reveal")
        if i not in self.masked:
            raise ValueError(f"secagg reveal from {name}, which sent no masked input")
        self.reveals[i] = message

    # -- the sum -------------------------------------------------------------------------------------------------

    def result(self) -> SecAggResult:
        """The sum of the survivors' inputs, or ``SecAggFailed`` naming what could not be recovered."""
        self.step = "done"
        survivors = sorted(self.masked)
        if len(survivors) < self.min_survivors:
            raise SecAggFailed(f"secagg round {self.round}: {len(survivors)} masked inputs, "
                               f"{self.min_survivors} needed")  # fmt: skip
        bits = self.field_plan.bits
        prime = np.uint64(gf.prime_below(bits))
        b_shares: dict[int, dict[int, int]] = {}
        s_shares: dict[int, dict[int, int]] = {}
        for holder, reveal in self.reveals.items():
            for owner, data in reveal.self_mask:
                b_shares.setdefault(owner, {})[holder] = shamir.from_bytes(data)
            for owner, data in reveal.mask_key:
                s_shares.setdefault(owner, {})[holder] = shamir.from_bytes(data)
        total = np.zeros(self.size, np.uint64)
        for i in survivors:
            total = (total + self.masked[i]) % prime
            got = b_shares.get(i, {})
            if len(got) < self.threshold:
                raise SecAggFailed(f"secagg round {self.round}: {len(got)} shares of device {self.devices[i - 1]}'s "
                                   f"self mask, {self.threshold} needed")  # fmt: skip
            b = shamir.reconstruct(dict(list(got.items())[: self.threshold]))
            total = (total + prime - gf.masks(b.to_bytes(32, "big"), self.size, bits)) % prime
        dropped = sorted(j for j in self.ciphertexts if j not in self.masked)
        for j in dropped:
            got = s_shares.get(j, {})
            if len(got) < self.threshold:
                raise SecAggFailed(f"secagg round {self.round}: {len(got)} shares of dropped device "
                                   f"{self.devices[j - 1]}'s mask key, {self.threshold} needed")  # fmt: skip
            secret = shamir.reconstruct(dict(list(got.items())[: self.threshold]))
            if secret >= 1 << 256 or crypto.KeyPair.from_private(secret.to_bytes(32, "big")).public != self.keys[j][1]:
                raise SecAggFailed(f"secagg round {self.round}: the mask key of {self.devices[j - 1]} does not "
                                   "match its advertised key")  # fmt: skip
            private = secret.to_bytes(32, "big")
            for i in self.graph[j]:
                if i in self.masked and j in self.ciphertexts and i in self.ciphertexts[j]:
                    seed = crypto.agree(private, self.keys[i][1], self.session, crypto.LABEL_MASK)
                    mask = gf.masks(seed, self.size, bits)
                    # i added sign(i, j) x mask; take it away
                    total = (total + (prime - mask if pairwise_sign(i, j) > 0 else mask)) % prime
        values = gf.from_field(total, bits).astype(np.float64) * self.field_plan.step
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        offset = 0
        for tensor, indices in self.coordinates:
            out[tensor] = (indices, values[offset : offset + indices.size])
            offset += indices.size
        fp = self.field_plan
        z = math.sqrt(2 * fp.noise * len(survivors)) * fp.step / fp.sensitivity if fp.noise else 0.0
        return SecAggResult(self.round, out, [self.devices[i - 1] for i in survivors],
                            [n for n, i in self.index.items() if i not in self.masked], z)  # fmt: skip


def ledger_entry(result: SecAggResult, clip: float, population: int, sampling_rate: float = 1.0) -> LedgerEntry:
    """The round's privacy event for the ledger: the sum carried the devices' Skellam shares, z (over the
    sensitivity, clip plus rounding) counted from the devices whose input is in it."""
    return LedgerEntry(result.round, "distributed-dp", population, sampling_rate, clip, result.noise_multiplier,
                       result.noise_multiplier, len(result.survivors), clip, time.time())  # fmt: skip


def threshold_for(holders: int, fraction: float = 0.5) -> int:
    """The smallest threshold above half the holders, raised to ``fraction`` of them if that is more."""
    return max(holders // 2 + 1, math.ceil(fraction * holders))


def holders_of(devices: int, degree: int) -> int:
    return min(devices - 1, degree + degree % 2) + 1


def sizes_of(coordinates: Iterable[tuple[int, np.ndarray]]) -> int:
    return sum(int(c.size) for _, c in coordinates)
