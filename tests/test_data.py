"""Data loaders on real files (bundled or shared) and on small fixtures in the published layouts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data import partition
from edge_runtime.data.cmapss import load_cmapss
from edge_runtime.data.dataset import DataError, Dataset, LabelError
from edge_runtime.data.files import load_csv, load_npz
from edge_runtime.data.har import SIGNALS, load_har_npz, load_har_uci
from edge_runtime.data.sources import load_source
from edge_runtime.data.ucr import read_ts
from edge_runtime.model.graph import Graph

TS_TEXT = """# a comment
@problemName Tiny
@timeStamps false
@univariate false
@classLabel true up down
@data
1,2,3:4,5,6:up
3,2:1,0:down
"""


def test_ts_reader_parses_channels_and_resamples_to_one_length(tmp_path: Path) -> None:
    f = tmp_path / "Tiny_TRAIN.ts"
    f.write_text(TS_TEXT)
    ds = read_ts(f)
    assert ds.x.shape == (2, 3, 2) and ds.classes == ["up", "down"]
    np.testing.assert_allclose(ds.x[0, :, 1], [4, 5, 6])
    np.testing.assert_allclose(ds.x[1, :, 0], [3, 2.5, 2])  # length 2 -> 3 by interpolation
    assert ds.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("@data\n1,2,3\n", "values and a label"),
        ("@classLabel true a\n@data\n1,2:b\n", "not among the declared classes"),
        ("@data\n1,x:a\n", "could not convert"),
        ("@data\n1:2:a\n3:a\n", "channel count"),
    ],
)
def test_ts_reader_names_the_bad_line(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.ts"
    f.write_text(body)
    with pytest.raises(DataError, match=message):
        read_ts(f)


@pytest.mark.skipif(importlib.util.find_spec("sktime") is None, reason="sktime wheel not installed")
@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("BasicMotions", (40, 100, 6), 4), ("PLAID", (537, 1344, 1), 11)]
)
def test_bundled_ucr_sets_read_from_the_sktime_wheel(name: str, shape: tuple[int, ...], classes: int) -> None:
    split = load_source(f"ucr:{name}")
    assert split.train.x.shape == shape and len(split.train.classes) == classes
    assert split.test.x.shape[1:] == shape[1:]


def _write_har_layout(root: Path, part: str, n: int, rng: np.random.Generator) -> None:
    base = root / "UCI HAR Dataset" / part
    (base / "Inertial Signals").mkdir(parents=True)
    for s in SIGNALS:
        np.savetxt(base / "Inertial Signals" / f"{s}_{part}.txt", rng.normal(size=(n, 128)))
    np.savetxt(base / f"X_{part}.txt", rng.normal(size=(n, 561)))
    np.savetxt(base / f"y_{part}.txt", rng.integers(1, 7, n), fmt="%d")
    np.savetxt(base / f"subject_{part}.txt", rng.integers(1, 4, n), fmt="%d")


def test_har_published_layout_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_har_layout(tmp_path, "train", 5, rng)
    _write_har_layout(tmp_path, "test", 3, rng)
    (tmp_path / "UCI HAR Dataset" / "activity_labels.txt").write_text("\n".join(f"{i} L{i}" for i in range(1, 7)))
    raw = load_har_uci(tmp_path)
    assert raw.train.x.shape == (5, 128, 9) and raw.test.x.shape == (3, 128, 9)
    assert raw.train.classes == [f"L{i}" for i in range(1, 7)]
    assert raw.train.y.min() >= 0 and raw.train.y.max() <= 5
    first = np.loadtxt(tmp_path / "UCI HAR Dataset" / "train" / "Inertial Signals" / "body_gyro_y_train.txt")
    np.testing.assert_allclose(raw.train.x[:, :, 4], first, rtol=1e-6)
    assert load_har_uci(tmp_path / "UCI HAR Dataset", features=True).train.x.shape == (5, 561)
    (tmp_path / "UCI HAR Dataset" / "test" / "y_test.txt").unlink()
    with pytest.raises(DataError, match=r"y_test\.txt"):
        load_har_uci(tmp_path)


def test_shared_har_and_cmapss(shared_data: Path) -> None:
    har = load_har_npz(shared_data / "har_raw.npz")
    assert har.train.x.shape == (7352, 128, 9) and len(np.unique(har.train.groups)) == 21  # type: ignore[arg-type]
    assert len(np.unique(har.test.groups)) == 9  # type: ignore[arg-type]
    cm = load_cmapss(shared_data / "cmapss_fd001.npz")
    assert len(np.unique(cm.train.groups)) == 100  # type: ignore[arg-type]
    assert 0.1 < cm.train.y.mean() < 0.2  # ~30 of ~200 cycles per engine are "fails soon"


def test_npz_and_csv_loaders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(50, 3)), y=np.repeat(["a", "b"], 25))
    split = load_npz(tmp_path / "d.npz")
    assert len(split.train) == 50 and len(split.test) == 0 and split.train.classes == ["a", "b"]
    (tmp_path / "d.csv").write_text("f1,f2,label\n" + "\n".join(f"{i},{i * 2},{'xy'[i % 2]}" for i in range(20)))
    csv = load_csv(tmp_path / "d.csv")
    assert csv.train.x.shape == (20, 2) and len(csv.test) == 0  # holding out is the caller's ([data] holdout)
    (tmp_path / "bad.csv").write_text("1,2,a\n3,oops,b\n")
    with pytest.raises(DataError, match=r"bad\.csv line 2, column 1: 'oops' is not a number"):
        load_csv(tmp_path / "bad.csv")
    np.savez(tmp_path / "bad.npz", z=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="unknown data source"):
        load_source("nonsense")


def test_dataset_refuses_nan_and_bad_labels() -> None:
    with pytest.raises(DataError, match="NaN"):
        Dataset(np.array([[np.nan]], np.float32), np.array([0]), ["a"])
    with pytest.raises(LabelError, match="labels span"):
        Dataset(np.zeros((1, 1), np.float32), np.array([3]), ["a"])


def test_dirichlet_partition_covers_every_sample_once_and_skews_labels(digits) -> None:
    parts = partition.dirichlet(digits.train, devices=30, alpha=0.5, seed=0)
    all_idx = np.concatenate(list(parts.values()))
    assert len(parts) == 30 and sorted(all_idx.tolist()) == list(range(len(digits.train)))
    assert min(len(p) for p in parts.values()) >= 2
    # Label skew: the average device sees far fewer than all 10 classes in equal share.
    top_share = np.mean([np.bincount(digits.train.y[p], minlength=10).max() / len(p) for p in parts.values()])
    assert top_share > 0.3
    assert partition.dirichlet(digits.train, 30, 0.5, seed=0)[7].tolist() == parts[7].tolist()


def test_natural_partition_needs_groups(digits) -> None:
    with pytest.raises(DataError, match="no natural groups"):
        partition.natural(digits.train)
    ds = Dataset(np.zeros((4, 1), np.float32), np.array([0, 1, 0, 1]), ["a", "b"], np.array([5, 5, 9, 9]))
    assert {k: v.tolist() for k, v in partition.natural(ds).items()} == {5: [0, 1], 9: [2, 3]}


def test_local_labels_are_matched_to_the_model_by_class_name(digits_mlp: Graph) -> None:
    from edge_runtime.model.info import model_labels

    # A device file holding only digits 3 and 7 is loaded as classes ["3", "7"], labels 0 and 1.
    assert model_labels(digits_mlp, np.array([0, 1, 1]), ["3", "7"]).tolist() == [3, 7, 7]
    with pytest.raises(LabelError, match=r"\['cat'\] are not classes of the model") as refused:
        model_labels(digits_mlp, np.array([0, 1]), ["3", "cat"])
    assert refused.value.reason == wire.FailureReason.LABELS
