"""Runs SecAgg+ sessions between the real device and gateway state machines, every message through the wire codec
(real CBOR bytes), with devices that drop out at a chosen step. Shared by the secagg tests and the benchmark."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.secagg import DeviceSession
from gateway.secagg import Coordinates, FieldPlan, SecAggResult, ServerSession


def relay(message: Any, kind: type) -> Any:
    """What the other end gets: the message encoded and decoded as the MQTT path does."""
    return wire.decode(wire.encode(message), expect=kind)


@dataclass
class Session:
    server: ServerSession
    devices: dict[str, DeviceSession] = field(default_factory=dict)
    uplink: dict[str, int] = field(default_factory=dict)  # bytes each device sent
    masked_seen: dict[str, bytes] = field(default_factory=dict)  # what the gateway saw of each input


def run_session(
    inputs: dict[str, np.ndarray],
    coordinates: Coordinates,
    field_plan: FieldPlan,
    *,
    degree: int,
    threshold: int,
    min_survivors: int = 1,
    gone_before_masking: Collection[str] = (),
    gone_after_masking: Collection[str] = (),
    tamper: Callable[[str, wire.SecAggUnmask], wire.SecAggUnmask] | None = None,
) -> tuple[Session, SecAggResult]:
    """One session; ``inputs`` are each device's integers at the coordinates. Raises what ``result`` raises."""
    names = sorted(inputs)
    server = ServerSession(names, 7, coordinates, field_plan, clip=1.0, degree=degree, threshold=threshold,
                           min_survivors=min_survivors, deadline=1_700_000_000)  # fmt: skip
    s = Session(server)

    def send(name: str, message: Any, kind: type) -> Any:
        data = wire.encode(message)
        s.uplink[name] = s.uplink.get(name, 0) + len(data)
        return wire.decode(data, expect=kind)

    for name, setup in server.setups().items():
        s.devices[name] = DeviceSession(relay(setup, wire.SecAggSetup))
        server.advertise(name, send(name, s.devices[name].advertise(), wire.SecAggAdvertise))
    for name, keys in server.key_lists().items():
        server.shares(name, send(name, s.devices[name].share(relay(keys, wire.SecAggKeys)), wire.SecAggShares))
    for name, collect in server.collects().items():
        if name in gone_before_masking:
            continue
        masked = s.devices[name].mask(relay(collect, wire.SecAggCollect), inputs[name])
        s.masked_seen[name] = masked.values
        server.masked_input(name, send(name, masked, wire.SecAggMasked))
    for name, unmask in server.unmasks().items():
        if name in gone_after_masking:
            continue
        request = tamper(name, unmask) if tamper else unmask
        server.reveal(name, send(name, s.devices[name].reveal(relay(request, wire.SecAggUnmask)), wire.SecAggReveal))
    return s, server.result()
