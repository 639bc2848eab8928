"""SecAgg+ sessions in one process: the real device and gateway state machines, every message through the wire
codec (real CBOR bytes), devices that drop out at a chosen step, and each party's CPU time and bytes counted.

What is left out is the transport (the federation runs the same steps over MQTT); the tests and
``bench/secagg.py`` use this to prove and measure the protocol itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
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
    masked_bytes: dict[str, int] = field(default_factory=dict)  # of which, the masked input message
    masked_seen: dict[str, bytes] = field(default_factory=dict)  # what the gateway saw of each input
    device_cpu: dict[str, float] = field(default_factory=dict)  # process seconds each device spent
    gateway_cpu: float = 0.0
    critical_path: float = 0.0  # per step the slowest device plus the gateway: the round's compute latency

    @contextmanager
    def device(self, name: str, slowest: list[float]) -> Iterator[None]:
        t0 = time.process_time()
        yield
        spent = time.process_time() - t0
        self.device_cpu[name] = self.device_cpu.get(name, 0.0) + spent
        slowest[0] = max(slowest[0], spent)

    @contextmanager
    def gateway(self) -> Iterator[None]:
        t0 = time.process_time()
        yield
        spent = time.process_time() - t0
        self.gateway_cpu += spent
        self.critical_path += spent


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
    round_: int = 7,
    clip: float = 1.0,
) -> tuple[Session, SecAggResult]:
    """One session; ``inputs`` are each device's integers at the coordinates. Raises what ``result`` raises."""
    names = sorted(inputs)
    s = Session(ServerSession(names, round_, coordinates, field_plan, clip=clip, degree=degree, threshold=threshold,
                              min_survivors=min_survivors, deadline=1_700_000_000))  # fmt: skip
    server = s.server

    def up(name: str, message: Any) -> bytes:
        """Encoded on the device (its CPU), counted as its uplink."""
        data = wire.encode(message)
        s.uplink[name] = s.uplink.get(name, 0) + len(data)
        return data

    def phase(requests: dict[str, Any], answer: Callable[[str, Any], Any | None], take: Callable[[str, Any], None],
              kind: type, request_kind: type) -> None:  # fmt: skip
        slowest = [0.0]
        answers: list[tuple[str, bytes]] = []
        for name, request in requests.items():
            with s.device(name, slowest):
                message = answer(name, wire.decode(request, expect=request_kind))
                if message is not None:
                    answers.append((name, up(name, message)))
        s.critical_path += slowest[0]
        with s.gateway():
            for name, data in answers:
                take(name, wire.decode(data, expect=kind))

    with s.gateway():
        setups = {name: wire.encode(m) for name, m in server.setups().items()}

    def advertise(name: str, setup: wire.SecAggSetup) -> wire.SecAggAdvertise:
        s.devices[name] = DeviceSession(setup)
        return s.devices[name].advertise()

    phase(setups, advertise, server.advertise, wire.SecAggAdvertise, wire.SecAggSetup)
    with s.gateway():
        keys = {name: wire.encode(m) for name, m in server.key_lists().items()}
    phase(keys, lambda name, m: s.devices[name].share(m), server.shares, wire.SecAggShares, wire.SecAggKeys)
    with s.gateway():
        collects = {n: wire.encode(m) for n, m in server.collects().items() if n not in gone_before_masking}

    def mask(name: str, collect: wire.SecAggCollect) -> wire.SecAggMasked:
        masked = s.devices[name].mask(collect, inputs[name])
        s.masked_seen[name] = masked.values
        s.masked_bytes[name] = len(wire.encode(masked))
        return masked

    phase(collects, mask, server.masked_input, wire.SecAggMasked, wire.SecAggCollect)
    with s.gateway():
        unmasks = {n: m for n, m in server.unmasks().items() if n not in gone_after_masking}
        requests = {n: wire.encode(tamper(n, m) if tamper else m) for n, m in unmasks.items()}
    phase(requests, lambda name, m: s.devices[name].reveal(m), server.reveal, wire.SecAggReveal, wire.SecAggUnmask)
    with s.gateway():
        result = server.result()
    return s, result
