"""What can go wrong with a board, as types a caller can catch one by one.

A bench script and the bridge react differently to each: a refusal
(:class:`BoardRefused`) is final for that request, a reset
(:class:`BoardReset`) means "handshake again and resume", silence
(:class:`BoardSilent`) means the board is dead until it answers again, and
garbage (:class:`BoardGarbage`) usually means a wrong baud rate or a port
that is not a tinyfed board at all.
"""

from __future__ import annotations

from typing import ClassVar

from edge_runtime.errors import TinyfedError
from edge_runtime.wire.serial import ErrorCode

from .link import LinkTimeout


class BoardProblem(RuntimeError, TinyfedError):
    """Base of everything the host driver raises about the board."""


class BoardRefused(BoardProblem):
    """The board answered ERROR: it understood the request and will not (or cannot) do it."""

    def __init__(self, code: ErrorCode, refused_type: int, detail: str) -> None:
        super().__init__(f"board refused message type {refused_type}: {code.name}" + (f" ({detail})" if detail else ""))
        self.code = code
        self.refused_type = refused_type
        self.detail = detail


class BoardSilent(BoardProblem, LinkTimeout):
    """No acknowledgement or no answer in time: unplugged, hung, or powered off."""


class BoardGarbage(BoardProblem):
    """Bytes arrive but no valid frame among them: wrong baud rate, wrong device, or a line this noisy."""


class BoardReset(BoardProblem):
    """The board announced a reset in the middle of something; its RAM state is gone, its flash is not."""

    REASONS: ClassVar[dict[int, str]] = {0: "requested", 1: "watchdog", 2: "brown-out", 3: "power-on"}

    def __init__(self, reason: int) -> None:
        super().__init__(f"board reset ({self.REASONS.get(reason, f'reason {reason}')})")
        self.reason = reason


class ProtocolError(BoardProblem):
    """A valid frame whose payload is not the message expected (or not a message at all)."""
