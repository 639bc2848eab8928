"""Why a member could not do a task, as the typed reason its report gives the gateway.

A device that cannot do a task says so (``wire.TaskFailure``) instead of
staying silent, so the round need not wait for it until its deadline and
the gateway stops selecting it until its birth message changes. The
reason is what an operator reads in ``gateway status``, so it must name
the class of problem, not the exception's type: :func:`failure_reason` is
the one place an exception becomes a ``wire.FailureReason``, for the
Python device and the serial bridge alike.

An error that already knows its reason (a ``reason`` attribute holding a
``FailureReason`` or its name, as data errors carry) keeps it; a board's
refusal is mapped from its serial error code; the rest are judged by type;
and the step of the task that failed supplies the default (labels that
are not the model's classes raise a plain ``ModelError``, which only the
step that maps labels can call a label problem).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .data.dataset import DataError
from .errors import TinyfedError
from .model.errors import (
    BackendUnavailableError,
    CorruptModelError,
    NotInt8Error,
    ShapeMismatchError,
    UnsupportedOpError,
)
from .wire.messages import FailureReason
from .wire.serial import ErrorCode

__all__ = ["FailureReason", "TaskAbandoned", "TaskFailed", "failing_as", "failure_reason"]

DETAIL_LIMIT = 256  # the wire's limit on a report's detail

# A board's ERROR code (wire.serial.ErrorCode) for a request it refused during a task, when the refusal says
# something lasting about the board, its data or the model. The others (MALFORMED, BAD_OFFSET, HASH_MISMATCH,
# BUSY, NO_MODEL: a damaged frame, a transfer to resume, a model the bridge has yet to bring) pass; a report
# would keep the board out of every round until its birth changes, which for a board is a bridge restart.
BOARD_CODES: dict[ErrorCode, FailureReason] = {
    ErrorCode.NO_MEMORY: FailureReason.NO_MEMORY,  # model or training buffers do not fit its RAM
    ErrorCode.NO_FLASH: FailureReason.NO_MEMORY,  # the model does not fit its flash
    ErrorCode.UNSUPPORTED: FailureReason.UNSUPPORTED,  # a kernel, or training, the firmware lacks
    ErrorCode.BAD_INPUT: FailureReason.SHAPE,  # its samples do not fit the model's input
    ErrorCode.INTERNAL: FailureReason.TRAINING,  # the firmware failed while training (its labels, say)
}

# Judged by type when the error names no reason; the first match wins, so subclasses come first.
BY_TYPE: tuple[tuple[type[BaseException], FailureReason], ...] = (
    (ShapeMismatchError, FailureReason.SHAPE),
    (UnsupportedOpError, FailureReason.UNSUPPORTED),
    (CorruptModelError, FailureReason.NO_MODEL),
    (NotInt8Error, FailureReason.NO_MODEL),
    (BackendUnavailableError, FailureReason.NO_MODEL),
    (MemoryError, FailureReason.NO_MEMORY),
    (FileNotFoundError, FailureReason.NO_DATA),
    (DataError, FailureReason.NO_DATA),
)


class TaskFailed(TinyfedError):
    """A task this member cannot do, with the reason its report gives; raised from a member's ``handle``."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TaskAbandoned(BaseException):
    """Not a failure, so nothing is reported: the member is stopping, or the gateway has moved on.

    A BaseException on purpose, like ``GeneratorExit``: it is raised from inside training (a progress
    callback, on SIGTERM) and must pass through any ``except Exception`` on its way out.
    """


def _named(value: object) -> FailureReason | None:
    """A reason an error carries: a FailureReason, or its name as text ("labels", "no-data", "NO_DATA")."""
    if isinstance(value, FailureReason):
        return value
    if isinstance(value, str):
        return FailureReason.__members__.get(value.strip().upper().replace("-", "_").replace(" ", "_"))
    return None  # an int is not trusted: other errors (a board's reset, say) use `reason` for numbers of their own


def failure_reason(exc: BaseException, default: FailureReason = FailureReason.OTHER) -> FailureReason:
    """The reason a report gives for ``exc``: its own, a board's error code, its type, else ``default``."""
    own = _named(getattr(exc, "reason", None))
    if own is not None:
        return own
    code = getattr(exc, "code", None)
    if isinstance(code, ErrorCode) and code in BOARD_CODES:
        return BOARD_CODES[code]
    for kind, reason in BY_TYPE:
        if isinstance(exc, kind):
            return reason
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        return failure_reason(cause, default)
    return default


def describe(exc: BaseException) -> str:
    """The report's detail: the error's own message (which names file, key or tensor), within the wire's limit."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, TinyfedError | OSError | ValueError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


@contextmanager
def failing_as(default: FailureReason) -> Iterator[None]:
    """One step of a task: an error raised in it becomes a TaskFailed, with ``default`` if it names no reason."""
    try:
        yield
    except TaskFailed:
        raise
    except Exception as exc:
        raise TaskFailed(failure_reason(exc, default), describe(exc)) from exc
