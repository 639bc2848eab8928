"""What can be wrong with a device's data, typed so that a failed task can say why on the wire.

Every data check raises a :class:`DataError` whose class carries the
:class:`~edge_runtime.wire.FailureReason` a device reports to the gateway
when the check stops a task (``exc.reason``):

- :class:`DataError` itself: ``NO_DATA``, the data could not be read (a
  file missing, unreadable, empty, malformed, or holding NaN);
- :class:`LabelError`: ``LABELS``, the labels are not the model's classes;
- :class:`ShapeError`: ``SHAPE``, the samples do not fit the model's input.

The message always names the file and the column, key or tensor at fault,
so the operator reading ``gateway status`` knows what to fix on which board.
:func:`failure_reason` maps any exception a task raised to the reason to
report (``None`` when it is not about data), so the agent needs one call.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import TinyfedError
from ..model.errors import ShapeMismatchError
from ..wire.messages import FailureReason


class DataError(ValueError, TinyfedError):
    """A data source is missing, malformed or inconsistent; the message names the file and field."""

    reason: ClassVar[FailureReason] = FailureReason.NO_DATA


class LabelError(DataError):
    """Labels the model cannot take: not among its classes, or not in the declared class list."""

    reason = FailureReason.LABELS


class ShapeError(DataError, ShapeMismatchError):
    """Samples that do not fit the model's input (feature count, window shape, normalisation width).

    Also a :class:`~edge_runtime.model.errors.ShapeMismatchError`, which is what callers that
    predate these classes (the emulated board) catch for "local data does not fit the model".
    """

    reason = FailureReason.SHAPE

    def __init__(
        self, message: str, tensor: str = "", expected: tuple[int, ...] = (), got: tuple[int, ...] = ()
    ) -> None:
        Exception.__init__(self, message)
        self.tensor, self.expected, self.got = tensor, expected, got


def failure_reason(exc: BaseException) -> FailureReason | None:
    """The reason a device reports for a task that raised ``exc``; None when ``exc`` is not about its data.

    A shape refusal from an interpreter backend (a plain ``ShapeMismatchError``) is a data shape
    problem too: the model is the federation's, the samples are the device's.
    """
    if isinstance(exc, DataError):
        return exc.reason
    if isinstance(exc, ShapeMismatchError):
        return FailureReason.SHAPE
    return None
