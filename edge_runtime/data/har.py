"""UCI HAR: the raw inertial windows (npz, as shipped here) and the published directory layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, DataSplit

HAR_LABELS = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
SIGNALS = [f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"]


def load_har_npz(path: str | Path) -> DataSplit:
    """Windows [N, 128, 9]; subjects are the groups (21 train = devices, 9 test = held out)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: HAR npz not found")
    with np.load(path, allow_pickle=False) as d:
        missing = {"X_train", "y_train", "subject_train", "X_test", "y_test", "subject_test"} - set(d.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)}")
        names = [str(v) for v in d["label_names"]] if "label_names" in d.files else HAR_LABELS
        train = Dataset(
            d["X_train"].astype(np.float32),
            d["y_train"].astype(np.int64),
            names,
            d["subject_train"].astype(np.int64),
            "har:train",
        )
        test = Dataset(
            d["X_test"].astype(np.float32),
            d["y_test"].astype(np.int64),
            names,
            d["subject_test"].astype(np.int64),
            "har:test",
        )
    return DataSplit(train, test)


def _read_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing from the UCI HAR layout")
    try:
        return np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _labels(root: Path) -> list[str]:
    f = root / "activity_labels.txt"
    if not f.is_file():
        return HAR_LABELS
    return [line.split()[1] for line in f.read_text().splitlines() if line.strip()]


def _part(root: Path, part: str, features: bool, names: list[str]) -> Dataset:
    base = root / part
    if features:
        x = _read_matrix(base / f"X_{part}.txt")
    else:
        x = np.stack([_read_matrix(base / "Inertial Signals" / f"{s}_{part}.txt") for s in SIGNALS], axis=-1)
    y = _read_matrix(base / f"y_{part}.txt").astype(np.int64).ravel() - 1  # files count from 1
    subjects = _read_matrix(base / f"subject_{part}.txt").astype(np.int64).ravel()
    if not (len(x) == len(y) == len(subjects)):
        raise DataError(f"{base}: {len(x)} samples, {len(y)} labels, {len(subjects)} subject ids disagree")
    return Dataset(x, y, names, subjects, f"har-uci:{part}")


def load_har_uci(root: str | Path, features: bool = False) -> DataSplit:
    """Read ``UCI HAR Dataset/`` as published: raw inertial windows, or the 561 features."""
    root = Path(root)
    if (root / "UCI HAR Dataset").is_dir():
        root = root / "UCI HAR Dataset"
    names = _labels(root)
    return DataSplit(_part(root, "train", features, names), _part(root, "test", features, names))
