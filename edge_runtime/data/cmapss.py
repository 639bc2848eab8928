"""NASA C-MAPSS FD001 as a predictive-maintenance classification task, one engine per device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, DataSplit

CLASSES = ["healthy", "fails_soon"]


def load_cmapss(path: str | Path, horizon: int = 30) -> DataSplit:
    """Rows of 24 readings; label 1 when the engine fails within ``horizon`` cycles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: C-MAPSS npz not found")
    with np.load(path, allow_pickle=False) as d:
        missing = {"X_train", "rul_train", "unit_train", "X_test", "rul_test", "unit_test"} - set(d.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)}")
        train = Dataset(
            d["X_train"].astype(np.float32),
            (d["rul_train"] <= horizon).astype(np.int64),
            CLASSES,
            d["unit_train"].astype(np.int64),
            "cmapss:train",
        )
        test = Dataset(
            d["X_test"].astype(np.float32),
            (d["rul_test"] <= horizon).astype(np.int64),
            CLASSES,
            d["unit_test"].astype(np.int64),
            "cmapss:test",
        )
    return DataSplit(train, test, [f"label: fails within {horizon} cycles"])
