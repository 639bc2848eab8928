"""The CSV and NPZ files a user brings (format: docs/data.md).

A file is read whole into one :class:`Dataset`; who holds out what for
evaluation is decided by the caller (``[data] holdout`` on a device,
``--holdout`` on the command line), never here. Every refusal names the
file and the line, column or key at fault.
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import labels as label_rules
from .dataset import Dataset, DataSplit
from .errors import DataError

log = logging.getLogger(__name__)

LabelColumn = int | str | None  # an index (negative counts from the end), a header name, or None: no labels


@dataclass
class Samples:
    """A file's features and its raw label values (None when it has no label column), before classes exist."""

    x: np.ndarray  # float32 [N, ...]
    labels: np.ndarray | None  # canonical label strings [N]
    origin: str
    label_field: str = ""
    classes: list[str] | None = None  # a class list the file declares (an npz ``classes`` array)
    groups: np.ndarray | None = None

    def dataset(self, classes: list[str] | None = None, name: str = "") -> Dataset:
        """Labels as indices into ``classes`` (default: the file's own list, else those its labels imply)."""
        if self.labels is None:
            raise DataError(f"{self.origin}: has no labels ({self.label_field or 'no label column'})")
        where = f"{self.origin} {self.label_field}".rstrip()
        classes = classes or self.classes or label_rules.class_names(self.labels, where)
        y = label_rules.encode(self.labels, classes, where)
        return Dataset(self.x, y, list(classes), self.groups, name or Path(self.origin).stem, self.origin,
                       self.label_field)  # fmt: skip


def parse_label_column(text: str) -> LabelColumn:
    """``--label-column`` as typed: a number is an index, ``none`` means no labels, anything else a header name."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return text


# -- CSV ----------------------------------------------------------------------------------------------------
def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_name(index: int, header: list[str] | None) -> str:
    return f"column {index} ({header[index]!r})" if header else f"column {index}"


def _label_index(label_column: int | str, width: int, header: list[str] | None, path: Path) -> int:
    if isinstance(label_column, str):
        if header is None:
            raise DataError(f"{path}: label_column {label_column!r} names a column, but the file has no header row")
        if label_column not in header:
            raise DataError(f"{path}: label_column {label_column!r} is not in the header ({', '.join(header)})")
        return header.index(label_column)
    if not -width <= label_column < width:
        raise DataError(
            f"{path}: label_column {label_column} is outside its {width} columns (0..{width - 1}, or -{width}..-1)"
        )
    return label_column % width


def read_csv(path: str | Path, label_column: LabelColumn = -1) -> Samples:
    """Rows of numbers with the label in ``label_column``; a first row with a non-number feature cell is a header.

    A last line without its newline that does not parse is a row still being
    written by a logger appending to the file: it is left for the next read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such csv file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append([cell.strip() for cell in row])
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: {exc}") from exc
    if not rows:
        raise DataError(f"{path}: no rows")
    width, first, first_line = len(rows[0]), rows[0], lines[0]
    header: list[str] | None = None
    if isinstance(label_column, str):  # a header names it, or (numbers and one label cell) there is no header
        has_header = label_column in first or sum(not _is_number(c) for c in first) > 1
    else:
        probe = None if label_column is None else _label_index(label_column, width, None, path)
        has_header = any(not _is_number(c) for i, c in enumerate(first) if i != probe)
    if has_header:
        header, rows, lines = first, rows[1:], lines[1:]
    unterminated = not text.endswith(("\n", "\r"))
    if rows and unterminated and (len(rows[-1]) != width or not all(rows[-1])):
        log.info("%s: line %d is still being written; it is read next time", path, lines[-1])
        rows, lines = rows[:-1], lines[:-1]
    if not rows:
        raise DataError(f"{path}: a header row and no data rows" if header else f"{path}: no rows")
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise DataError(f"{path} line {line}: {len(row)} columns, line {first_line} has {width}")
    label = None if label_column is None else _label_index(label_column, width, header, path)
    features = [i for i in range(width) if i != label]
    if not features:
        raise DataError(f"{path}: no feature columns besides the label column")
    table = np.array(rows, dtype=str)
    try:
        x = table[:, features].astype(np.float32)
    except ValueError:
        for row, line in zip(rows, lines, strict=True):
            for i in features:
                if not _is_number(row[i]):
                    what = "is empty (missing values are not supported: fill or drop the row)" if not row[i] else (
                        f"{row[i]!r} is not a number")  # fmt: skip
                    raise DataError(f"{path} line {line}, {_column_name(i, header)}: {what}") from None
        raise
    if not np.isfinite(x).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise DataError(f"{path} line {lines[r]}, {_column_name(features[c], header)}: {rows[r][features[c]]!r} "
                        "is not a finite number")  # fmt: skip
    if label is None:
        return Samples(x, None, str(path), "no label column")
    values = table[:, label]
    empty = np.flatnonzero(values == "")
    if len(empty):
        raise DataError(f"{path} line {lines[int(empty[0])]}, {_column_name(label, header)}: the label is empty")
    return Samples(x, label_rules.canonical(values), str(path), _column_name(label, header))


# -- NPZ ----------------------------------------------------------------------------------------------------
def _array(d: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(d[key])
    except ValueError as exc:  # object arrays: allow_pickle=False
        raise DataError(f"{path} key {key!r}: {exc} (store numbers or fixed-width strings)") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} key {key!r}: unreadable: {exc}") from exc


def _features(d: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    x = _array(d, key, path)
    if x.dtype.kind not in "iuf" or x.ndim < 2:
        raise DataError(f"{path} key {key!r}: expected numbers shaped [samples, features] or [samples, steps, "
                        f"channels], got {x.dtype} {list(x.shape)}")  # fmt: skip
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"{path} key {key!r}: sample {row} holds NaN or an infinite value")
    return x.astype(np.float32)


def _labels(d: np.lib.npyio.NpzFile, key: str, path: Path, n: int, x_key: str, classes: list[str] | None) -> np.ndarray:
    y = _array(d, key, path)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path} key {key!r}: expected {n} labels (one per row of {x_key!r}), "
                        f"got shape {list(y.shape)}")  # fmt: skip
    if classes is None:
        return label_rules.canonical(y)
    if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
        raise DataError(f"{path} key {key!r}: with a 'classes' array, labels are its indices 0..{len(classes) - 1}")
    return np.array(classes, dtype=str)[y.astype(np.int64)]


def _groups(d: np.lib.npyio.NpzFile, key: str, path: Path, n: int) -> np.ndarray | None:
    if key not in d.files:
        return None
    g = _array(d, key, path)
    if g.ndim != 1 or len(g) != n or g.dtype.kind not in "iu":
        raise DataError(f"{path} key {key!r}: expected {n} integer group ids, got {g.dtype} {list(g.shape)}")
    return g.astype(np.int64)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        d = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such npz file") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npz file ({exc}); write it to a temporary name, then rename it"
        ) from exc
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive of named arrays (np.savez)")
    return d


def read_npz(path: str | Path, part: str = "x") -> Samples:
    """``part`` ``x`` reads keys x/y, ``train`` X_train/y_train, ``test`` X_test/y_test; y may be absent."""
    path = Path(path)
    x_key, y_key, g_key = {"x": ("x", "y", "groups"), "train": ("X_train", "y_train", "groups_train"),
                           "test": ("X_test", "y_test", "groups_test")}[part]  # fmt: skip
    with _open_npz(path) as d:
        if x_key not in d.files:
            raise DataError(f"{path}: needs arrays x, y or X_train, y_train, X_test, y_test; has {d.files}")
        classes = None
        if "classes" in d.files:
            classes = label_rules.declared(_array(d, "classes", path).astype(str).tolist(), f"{path} key 'classes'")
        x = _features(d, x_key, path)
        labels = _labels(d, y_key, path, len(x), x_key, classes) if y_key in d.files else None
        groups = _groups(d, g_key, path, len(x))
    return Samples(x, labels, str(path), f"key {y_key!r}" if labels is not None else f"no key {y_key!r}", classes,
                   groups)  # fmt: skip


def npz_parts(path: str | Path) -> list[str]:
    """Which parts an npz holds: ``["x"]`` or ``["train", "test"]``."""
    path = Path(path)
    with _open_npz(path) as d:
        files = set(d.files)
    if "x" in files:
        return ["x"]
    if {"X_train", "X_test"} <= files:
        return ["train", "test"]
    raise DataError(f"{path}: needs arrays x, y or X_train, y_train, X_test, y_test; has {sorted(files)}")


def load_npz(path: str | Path) -> DataSplit:
    """Keys ``x``/``y`` (all samples; the test part is empty) or ``X_train``/``y_train``/``X_test``/``y_test``."""
    parts = npz_parts(path)
    if parts == ["x"]:
        ds = read_npz(path, "x").dataset()
        return DataSplit(ds, ds.empty(f"{ds.name} (no test part)"))
    train, test = read_npz(path, "train"), read_npz(path, "test")
    if train.labels is None or test.labels is None:
        raise DataError(f"{path}: needs keys y_train and y_test beside X_train and X_test")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{path}: X_train samples are {list(train.x.shape[1:])}, X_test {list(test.x.shape[1:])}")
    where = f"{path} keys 'y_train', 'y_test'"
    classes = train.classes or label_rules.class_names(np.concatenate([train.labels, test.labels]), where)
    stem = Path(path).stem
    return DataSplit(train.dataset(classes, f"{stem}:train"), test.dataset(classes, f"{stem}:test"))


def load_csv(path: str | Path, label_column: int | str = -1) -> DataSplit:
    """Every row of a CSV file as the training part (the test part is empty)."""
    ds = read_csv(path, label_column).dataset()
    return DataSplit(ds, ds.empty(f"{ds.name} (no test part)"))
