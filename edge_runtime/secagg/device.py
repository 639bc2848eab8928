"""The device's side of a SecAgg+ session, as a pure state machine: each method takes the gateway's request and
returns the answer to send, or raises ``SecAggRefused`` and the device answers nothing more.

Steps (Bell et al. 2020, semi-honest server with the SecAgg+ checks):
setup -> ``advertise`` two fresh X25519 public keys; keys -> ``share`` the
self-mask seed b and the mask key s (Shamir, threshold t) with the
neighbours the graph gives, encrypted to each; collect -> ``mask`` the input
with b and the pairwise masks of the neighbours whose shares arrived;
unmask -> ``reveal`` b-shares of the survivors and s-shares of the dropped,
once, and never both for one device.

The checks that keep a gateway from learning one input: neighbours are the
ones the announced graph gives (not the gateway's choice); 2t exceeds the
number of holders, so no two disjoint sets of them can each reconstruct;
one unmask request per session; an index in both lists is refused.
"""

from __future__ import annotations

import numpy as np

from ..wire.errors import WireError
from ..wire.secagg import (
    SecAggAdvertise,
    SecAggCollect,
    SecAggKeys,
    SecAggMasked,
    SecAggReveal,
    SecAggSetup,
    SecAggShares,
    SecAggUnmask,
    decode_share,
    encode_share,
)
from . import crypto, field, graph, shamir
from .errors import SecAggRefused


def associated(session: bytes, sender: int, recipient: int) -> bytes:
    """What a share ciphertext is bound to: the session, who sent it, to whom."""
    return session + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")


def check_threshold(threshold: int, holders: int) -> str | None:
    """Why a threshold is unsafe or useless for ``holders`` share holders, or None."""
    if threshold > holders:
        return f"threshold {threshold} exceeds the {holders} holders of each secret: nothing could be recovered"
    if 2 * threshold <= holders:
        return (f"threshold {threshold} is not above half of {holders} holders: two disjoint groups could each "
                "reconstruct, one device's self mask and mask key together")  # fmt: skip
    return None


def pairwise_sign(own: int, other: int) -> int:
    """+1 for the lower index of a pair, -1 for the higher: the two masks cancel in the sum."""
    return 1 if own < other else -1


class DeviceSession:
    """One device in one session. Secrets are fresh per session and live only in this object."""

    def __init__(self, setup: SecAggSetup) -> None:
        self.setup = setup
        self.index = setup.index
        self.neighbours = set(graph.neighbours(setup.count, setup.degree, setup.graph_seed)[setup.index])
        reason = check_threshold(setup.threshold, len(self.neighbours) + 1)
        if reason is not None:
            raise SecAggRefused(f"secagg setup of round {setup.round}: {reason}")
        self.c = crypto.KeyPair.generate()
        self.s = crypto.KeyPair.generate(shamir.secret_bytes())  # shared, so one field element
        self.b = shamir.secret_bytes()
        self.peers: dict[int, tuple[bytes, bytes]] = {}  # index -> (c public, s public)
        self.own_shares: tuple[int, int] | None = None  # my shares of my own (b, s)
        self.held: dict[int, tuple[int, int]] = {}  # sender -> its (b share, s share) for me
        self.step = "setup"

    def _expect(self, step: str, request: str) -> None:
        if self.step != step:
            raise SecAggRefused(f"secagg {request} arrived at step {self.step} of round {self.setup.round}")

    def _session(self, session: bytes, request: str) -> None:
        if session != self.setup.session:
            raise SecAggRefused(f"secagg {request} names another session")

    def advertise(self) -> SecAggAdvertise:
        self._expect("setup", "advertise")
        self.step = "advertised"
        return SecAggAdvertise(self.setup.session, self.index, self.c.public, self.s.public)

    def share(self, keys: SecAggKeys) -> SecAggShares:
        self._expect("advertised", "keys")
        self._session(keys.session, "keys")
        strangers = sorted({i for i, _, _ in keys.neighbours} - self.neighbours)
        if strangers:
            raise SecAggRefused(f"secagg keys list {strangers}, not neighbours of {self.index} in the announced graph")
        if len(keys.neighbours) + 1 < self.setup.threshold:
            raise SecAggRefused(f"secagg keys: {len(keys.neighbours) + 1} holders, threshold {self.setup.threshold}")
        if any(c == self.c.public or s == self.s.public for _, c, s in keys.neighbours):
            raise SecAggRefused("secagg keys: a neighbour presents this device's own key")
        self.peers = {i: (c, s) for i, c, s in keys.neighbours}
        xs = [self.index, *self.peers]
        b_shares = shamir.split(int.from_bytes(self.b, "big"), self.setup.threshold, xs)
        s_shares = shamir.split(int.from_bytes(self.s.private, "big"), self.setup.threshold, xs)
        self.own_shares = (b_shares[self.index], s_shares[self.index])
        out = []
        for j, (c_public, _) in sorted(self.peers.items()):
            key = crypto.agree(self.c.private, c_public, self.setup.session, crypto.LABEL_SHARES)
            plain = encode_share(self.index, j, shamir.to_bytes(b_shares[j]), shamir.to_bytes(s_shares[j]))
            out.append((j, crypto.encrypt(key, plain, associated(self.setup.session, self.index, j))))
        self.step = "shared"
        return SecAggShares(self.setup.session, self.index, out)

    def mask(self, collect: SecAggCollect, values: np.ndarray) -> SecAggMasked:
        """``values``: the quantised, noised input (``SparseInput.prepare``), one integer per coordinate."""
        self._expect("shared", "collect")
        self._session(collect.session, "collect")
        if values.shape != (self.setup.size,):
            raise ValueError(f"{values.shape} input values for {self.setup.size} coordinates")
        for j, ciphertext in collect.ciphertexts:
            if j not in self.peers:
                raise SecAggRefused(f"secagg collect: a share from {j}, whose keys this device was not given")
            key = crypto.agree(self.c.private, self.peers[j][0], self.setup.session, crypto.LABEL_SHARES)
            try:
                sender, recipient, b_share, s_share = decode_share(
                    crypto.decrypt(key, ciphertext, associated(self.setup.session, j, self.index))
                )
                self.held[j] = (shamir.from_bytes(b_share), shamir.from_bytes(s_share))
            except (crypto.DecryptionFailed, ValueError, WireError) as exc:
                raise SecAggRefused(f"secagg collect: the share from {j} does not verify ({exc})") from exc
            if (sender, recipient) != (j, self.index):
                raise SecAggRefused(f"secagg collect: the share from {j} names {sender} -> {recipient}")
        if len(self.held) + 1 < self.setup.threshold:
            raise SecAggRefused(f"secagg collect: shares of {len(self.held) + 1} devices, fewer than the threshold")
        bits, count = self.setup.bits, self.setup.size
        prime = np.uint64(field.prime_below(bits))
        total = (field.to_field(values, bits) + field.masks(self.b, count, bits)) % prime
        for j in sorted(self.held):
            seed = crypto.agree(self.s.private, self.peers[j][1], self.setup.session, crypto.LABEL_MASK)
            mask = field.masks(seed, count, bits)
            total = (total + (mask if pairwise_sign(self.index, j) > 0 else prime - mask)) % prime
        self.step = "masked"
        return SecAggMasked(self.setup.session, self.index, field.pack(total, bits))

    def reveal(self, unmask: SecAggUnmask) -> SecAggReveal:
        self._expect("masked", "unmask")
        self._session(unmask.session, "unmask")
        self.step = "done"  # one answer per session, whatever happens next
        survivors, dropped = set(unmask.survivors), set(unmask.dropped)
        both = sorted(survivors & dropped)
        if both:
            raise SecAggRefused(f"secagg unmask asks for both the self-mask and the mask-key share of {both}")
        if self.index in dropped or self.index not in survivors:
            raise SecAggRefused(f"secagg unmask calls this device ({self.index}) dropped; it sent its masked input")
        known = set(self.held) | {self.index}
        unknown = sorted((survivors | dropped) - known)
        if unknown:
            raise SecAggRefused(f"secagg unmask names {unknown}, whose shares this device does not hold")
        assert self.own_shares is not None
        held = self.held | {self.index: self.own_shares}
        return SecAggReveal(
            self.setup.session, self.index,
            [(j, shamir.to_bytes(held[j][0])) for j in sorted(survivors)],
            [(j, shamir.to_bytes(held[j][1])) for j in sorted(dropped)],
        )  # fmt: skip
