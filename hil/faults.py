"""Fault injection for the emulated board, one object for the API and one string for the command line.

``--faults "ber=1e-4,drop=1e-5,reset-at=5000,brown-out=300,slow=2,seed=7"``:

| key | fault |
|---|---|
| ``ber`` | bit error rate on every byte the board sends and receives |
| ``drop`` | probability that a byte vanishes |
| ``reset-at`` | the board resets when a model transfer reaches this byte (once) |
| ``brown-out`` | power is lost after this many bytes of the next model writes (once) |
| ``brown-out-commit`` | power is lost this many bytes into the next commit record (once) |
| ``slow`` | the board's clock runs this many times slow: its bytes and its work take longer |
| ``seed`` | seed of the line's random faults, for a repeatable run |
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_runtime.errors import TinyfedError

from .pty_port import LineFaults


class FaultSpecError(ValueError, TinyfedError):
    """A ``--faults`` string that does not parse; the message names the bad part."""


@dataclass
class FaultPlan:
    line: LineFaults = field(default_factory=LineFaults)
    reset_at_byte: int | None = None
    brown_out_after: int | None = None
    brown_out_commit: int | None = None

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise FaultSpecError(f"fault {part!r} is not key=value (for example ber=1e-4)")
            values[key.strip()] = value.strip()
        known = {"ber", "drop", "reset-at", "brown-out", "brown-out-commit", "slow", "seed"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FaultSpecError(f"unknown fault {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            line = LineFaults(
                bit_error_rate=float(values.get("ber", 0.0)),
                drop_rate=float(values.get("drop", 0.0)),
                slow_clock=float(values.get("slow", 1.0)),
                seed=int(values.get("seed", 0)),
            )
            reset_at = int(values["reset-at"]) if "reset-at" in values else None
            brown_out = int(values["brown-out"]) if "brown-out" in values else None
            commit = int(values["brown-out-commit"]) if "brown-out-commit" in values else None
        except ValueError as exc:
            raise FaultSpecError(f"faults {spec!r}: {exc}") from exc
        for name, count in (("reset-at", reset_at), ("brown-out", brown_out), ("brown-out-commit", commit)):
            if count is not None and count < 0:
                raise FaultSpecError(f"{name} must be a byte count >= 0, got {count}")
        return cls(line, reset_at, brown_out, commit)
