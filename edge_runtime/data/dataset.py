"""The in-memory form of a device's data: float samples, integer labels, optional groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import DataError, LabelError, ShapeError

__all__ = ["DataError", "DataSplit", "Dataset", "LabelError", "ShapeError", "stratified_split"]


@dataclass
class Dataset:
    x: np.ndarray  # float32 [N, ...]
    y: np.ndarray  # int64 [N]
    classes: list[str]
    groups: np.ndarray | None = None  # natural device id per sample (subject, engine, household)
    name: str = ""
    origin: str = ""  # the file the samples came from, as errors name it ("" for bundled sets)
    label_field: str = ""  # where in it the labels are: "column 4 ('label')", "key 'y'"

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.where}: {len(self.x)} samples but {len(self.y)} labels")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise DataError(f"{self.where}: {len(self.groups)} group ids for {len(self.y)} samples")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise LabelError(
                f"{self.labels_at}: labels span {self.y.min()}..{self.y.max()}, {len(self.classes)} classes named"
            )
        if self.x.dtype.kind == "f" and not np.isfinite(self.x).all():
            row = int(np.flatnonzero(~np.isfinite(self.x.reshape(len(self.x), -1)).all(axis=1))[0])
            raise DataError(f"{self.where}: samples contain NaN or infinite values (sample {row} is the first)")

    @property
    def where(self) -> str:
        """The file (or set) to name in an error."""
        return self.origin or self.name or "data"

    @property
    def labels_at(self) -> str:
        """The file and the column or key of the labels, to name in an error about them."""
        return f"{self.where} {self.label_field}".rstrip()

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray, name: str | None = None) -> Dataset:
        return Dataset(
            self.x[index],
            self.y[index],
            self.classes,
            None if self.groups is None else self.groups[index],
            name or self.name,
            self.origin,
            self.label_field,
        )

    def empty(self, name: str | None = None) -> Dataset:
        """No samples, the same classes and provenance: the test part of a source that ships none."""
        return self.subset(np.zeros(0, np.int64), name)


@dataclass
class DataSplit:
    train: Dataset
    test: Dataset
    notes: list[str] = field(default_factory=list)


def stratified_split(ds: Dataset, test_fraction: float, seed: int) -> DataSplit:
    """Hold out ``test_fraction`` of every class (for sources that ship no test split)."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(ds.y):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        test_idx.append(idx[: max(1, round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(ds)), test)
    return DataSplit(ds.subset(train, ds.name + ":train"), ds.subset(test, ds.name + ":test"))
