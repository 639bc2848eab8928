"""Plain NPZ and CSV data a user brings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, DataSplit, stratified_split


def _classes(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    values, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64), [str(v) for v in values]


def load_npz(path: str | Path, seed: int = 0) -> DataSplit:
    """Arrays ``x``/``y`` (split 80/20 here) or ``X_train``/``y_train``/``X_test``/``y_test``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such npz file")
    with np.load(path, allow_pickle=False) as d:
        if {"X_train", "y_train", "X_test", "y_test"} <= set(d.files):
            y_all, names = _classes(np.concatenate([d["y_train"], d["y_test"]]))
            n = len(d["y_train"])
            g_tr = d["groups_train"].astype(np.int64) if "groups_train" in d.files else None
            return DataSplit(
                Dataset(d["X_train"].astype(np.float32), y_all[:n], names, g_tr, path.stem),
                Dataset(d["X_test"].astype(np.float32), y_all[n:], names, None, path.stem),
            )
        if {"x", "y"} <= set(d.files):
            y, names = _classes(d["y"])
            groups = d["groups"].astype(np.int64) if "groups" in d.files else None
            return stratified_split(Dataset(d["x"].astype(np.float32), y, names, groups, path.stem), 0.2, seed)
        raise DataError(f"{path}: needs arrays x, y or X_train, y_train, X_test, y_test; has {d.files}")


def load_csv(path: str | Path, seed: int = 0, label_column: int = -1) -> DataSplit:
    """Numeric features with the label in ``label_column``; a non-numeric first row is a header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such csv file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: empty")
    rows = [ln.split(",") for ln in lines]
    try:
        [float(v) for i, v in enumerate(rows[0]) if i != (label_column % len(rows[0]))]
    except ValueError:
        rows = rows[1:]
    width = {len(r) for r in rows}
    if len(width) != 1:
        raise DataError(f"{path}: rows have differing column counts {sorted(width)}")
    labels = np.array([r[label_column].strip() for r in rows])
    try:
        x = np.array([[float(v) for i, v in enumerate(r) if i != (label_column % len(r))] for r in rows], np.float32)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric feature ({exc})") from exc
    y, names = _classes(labels)
    return stratified_split(Dataset(x, y, names, name=path.stem), 0.2, seed)
