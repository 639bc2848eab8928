"""Reader for the UEA/UCR archive's ``.ts`` text format (no sktime import needed).

Format: ``#`` comments, ``@`` directives (``@problemName``, ``@classLabel true
a b c``, ``@data``), then one series per line with channels separated by
``:`` and values by ``,``, the class label last. Variable-length series
(PLAID) are resampled to one length, since an int8 model has a fixed input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset

BUNDLED = ("PLAID", "ACSF1", "BasicMotions", "JapaneseVowels")


def _resample(series: np.ndarray, length: int) -> np.ndarray:
    if len(series) == length:
        return series
    if len(series) == 1:
        return np.repeat(series, length)
    src = np.linspace(0.0, 1.0, len(series))
    return np.interp(np.linspace(0.0, 1.0, length), src, series)


def read_ts(path: str | Path, length: int | None = None, classes: list[str] | None = None) -> Dataset:
    """Samples [N, length, channels]; ``length`` defaults to the longest series in the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such .ts file")
    labels: list[str] = []
    declared: list[str] = []
    rows: list[list[np.ndarray]] = []
    in_data = False
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@classlabel"):
                    parts = line.split()
                    declared = parts[2:] if len(parts) > 2 and parts[1].lower() == "true" else []
                elif low.startswith("@data"):
                    in_data = True
                continue
            fields = line.split(":")
            if len(fields) < 2:
                raise DataError(f"{path}:{lineno}: a series line needs values and a label separated by ':'")
            try:
                channels = [
                    np.array([float(v) if v not in ("?", "NaN") else np.nan for v in f.split(",")]) for f in fields[:-1]
                ]
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from exc
            rows.append(channels)
            labels.append(fields[-1].strip())
    if not rows:
        raise DataError(f"{path}: no @data rows")
    n_channels = {len(r) for r in rows}
    if len(n_channels) != 1:
        raise DataError(f"{path}: rows disagree on channel count {sorted(n_channels)}")
    target = length or max(len(c) for r in rows for c in r)
    x = np.stack([np.stack([_resample(np.nan_to_num(c, nan=0.0), target) for c in r], axis=-1) for r in rows])
    names = classes or declared or sorted(set(labels))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} not among the declared classes {names}")
    y = np.array([index[v] for v in labels], np.int64)
    return Dataset(x.astype(np.float32), y, names, name=path.stem)


def bundled_ts_dir(problem: str) -> Path:
    """Folder of a UEA/UCR problem shipped inside the sktime wheel (found without importing sktime)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{problem}: the sktime wheel is not installed (pip install --no-deps sktime)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / problem
    if not folder.is_dir():
        raise DataError(f"{problem}: not bundled in this sktime wheel ({folder} missing)")
    return folder
