"""From label values to class names and indices, one rule for every source.

A class is known by its name everywhere: the model stores its class names,
and a device's labels are matched to them by name (``model_labels``), so a
device holding only some classes trains the right outputs. Names must
therefore not depend on how a file spells a number: ``3``, ``"3"`` and
``3.0`` (what pandas writes for an integer column with a gap) are the one
class ``"3"``.

Integer labels are class numbers: the classes are every integer from the
smallest label to the largest, in numeric order, so a model built from a
sample where class 3 happens to be absent still has an output for it (and
:func:`absent_classes` says so). Other labels are names, sorted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DataError, LabelError

MAX_CLASSES = 1000  # more distinct labels than this is a column of measurements, not of classes


def canonical(values: np.ndarray) -> np.ndarray:
    """Label values as class-name strings: integral numbers written without a fraction, text stripped."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(str)
    if values.dtype.kind == "f":
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype(np.int64).astype(str)
        return values.astype(str)
    text = np.char.strip(values.astype(str))
    try:
        numbers = text.astype(np.float64)
    except ValueError:
        return text
    if np.isfinite(numbers).all() and (numbers == np.round(numbers)).all():
        return numbers.astype(np.int64).astype(str)
    return text


def _integers(names: Sequence[str]) -> list[int] | None:
    try:
        return [int(n) for n in names]
    except ValueError:
        return None


def class_names(labels: np.ndarray, where: str) -> list[str]:
    """The classes canonical ``labels`` imply: integers from the smallest to the largest, else sorted names."""
    distinct = [str(v) for v in np.unique(labels)]
    numbers = _integers(distinct)
    if numbers is not None:
        low, high = min(numbers), max(numbers)
        if high - low + 1 <= MAX_CLASSES:
            return [str(i) for i in range(low, high + 1)]
        distinct = [str(n) for n in sorted(numbers)]
    if len(distinct) > MAX_CLASSES:
        raise LabelError(
            f"{where}: {len(distinct)} distinct labels (for example {', '.join(distinct[:3])}): more than "
            f"{MAX_CLASSES} classes, so this is probably not the label column (set label_column)"
        )
    return distinct


def encode(labels: np.ndarray, classes: Sequence[str], where: str) -> np.ndarray:
    """Canonical ``labels`` as indices into ``classes``; a label that is not a class is a LabelError."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({str(v) for v in np.unique(labels)} - set(index))
    if unknown:
        raise LabelError(f"{where}: labels {unknown[:5]} are not among the classes {list(classes)[:10]}")
    return np.array([index[str(v)] for v in labels], np.int64)


def absent_classes(y: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Classes with no sample in ``y``."""
    counts = np.bincount(y, minlength=len(classes)) if len(y) else np.zeros(len(classes), np.int64)
    return [name for name, n in zip(classes, counts, strict=True) if n == 0]


def describe_absent(absent: Sequence[str], classes: Sequence[str]) -> str:
    """``labels 0..5 expected, 3 absent`` for class numbers; the names otherwise."""
    numbers = _integers(list(classes))
    shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    if numbers is not None and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"labels {numbers[0]}..{numbers[-1]} expected, {shown} absent"
    return f"classes {shown} have no samples"


def declared(names: Sequence[str], where: str) -> list[str]:
    """A class list a user wrote down (``--classes``, an npz ``classes`` array): non-empty and distinct."""
    cleaned = [str(n) for n in canonical(np.array([str(n) for n in names]))] if len(names) else []
    if not cleaned or any(not n for n in cleaned):
        raise DataError(f"{where}: class names must be non-empty (got {list(names)[:10]})")
    doubled = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if doubled:
        raise DataError(f"{where}: class names {doubled[:5]} appear more than once")
    return cleaned
