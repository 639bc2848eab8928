"""Why a secure-aggregation session stops, said so that the log and the round's record can name it."""

from __future__ import annotations

from ..errors import TinyfedError


class SecAggRefused(TinyfedError, ValueError):
    """A device will not take the next step: the gateway asked for something the protocol forbids, or sent
    something that does not check. The device answers nothing more in that session."""


class SecAggFailed(TinyfedError, RuntimeError):
    """The gateway cannot recover the session's sum (too many devices dropped out): the round fails, and nothing
    computed from it is published."""
