"""Turn a ``--data`` argument into a train/test split.

Names: ``digits`` (scikit-learn's bundled copy), ``har`` and ``cmapss`` (the
npz files in the shared data folder), ``ucr:PLAID`` / ``ucr:ACSF1`` /
``ucr:BasicMotions`` (inside the sktime wheel), ``har-uci:DIR`` (the
published HAR layout), or a path to a ``.npz`` / ``.csv`` file (docs/data.md):
every sample of such a file is in the training part, and the test part is
empty unless an npz ships one (``X_test``); callers hold out what they need.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, DataSplit, stratified_split
from .files import LabelColumn

NAMED = ("digits", "har", "cmapss", "ucr:PLAID", "ucr:ACSF1", "ucr:BasicMotions")


def shared_data_dir() -> Path | None:
    """``$TINYFED_DATA_DIR``, else ``../shared/data`` beside the checkout or the working directory."""
    env = os.environ.get("TINYFED_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


def _shared_file(name: str) -> Path:
    folder = shared_data_dir()
    if folder is None or not (folder / name).is_file():
        raise DataError(f"{name} not found: set TINYFED_DATA_DIR to the folder holding it")
    return folder / name


def load_digits(seed: int = 0) -> DataSplit:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise DataError("digits needs scikit-learn: pip install 'tinyfed[data]'") from exc
    d = sk_digits()
    ds = Dataset(d.data.astype(np.float32), d.target.astype(np.int64), [str(i) for i in range(10)], name="digits")
    return stratified_split(ds, 0.2, seed)


def source_file(spec: str) -> Path | None:
    """The file a ``--data`` spec reads, when it is a user's own .csv/.npz (what a device re-reads when it changes)."""
    path = Path(spec)
    return path if path.suffix in (".csv", ".npz") else None


def load_source(spec: str, seed: int = 0, label_column: LabelColumn = -1) -> DataSplit:
    from .cmapss import load_cmapss
    from .files import load_csv, load_npz
    from .har import load_har_npz, load_har_uci
    from .ucr import bundled_ts_dir, read_ts

    if spec == "digits":
        return load_digits(seed)
    if spec == "har":
        return load_har_npz(_shared_file("har_raw.npz"))
    if spec == "cmapss":
        return load_cmapss(_shared_file("cmapss_fd001.npz"))
    if spec.startswith("har-uci:"):
        return load_har_uci(spec.split(":", 1)[1])
    if spec.startswith("ucr:"):
        problem = spec.split(":", 1)[1]
        folder = bundled_ts_dir(problem)
        train = read_ts(folder / f"{problem}_TRAIN.ts")
        length = train.x.shape[1]
        test = read_ts(folder / f"{problem}_TEST.ts", length=length, classes=train.classes)
        return DataSplit(train, test)
    path = Path(spec)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.suffix == ".csv":
        if label_column is None:
            raise DataError(f"{path}: training and evaluation need a label column (label_column)")
        return load_csv(path, label_column)
    raise DataError(f"unknown data source {spec!r}; use one of {', '.join(NAMED)}, har-uci:DIR, or a .npz/.csv path")
