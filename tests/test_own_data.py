"""A user's own CSV and NPZ files (docs/data.md): layouts, class names, holdout, re-reading, and typed refusals.

Every file here is written by the test and read by the real loaders; the refusals are the messages a user
sees, each naming the file and the line, column or key at fault, and each typed with the reason a device
reports to the gateway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent
from edge_runtime.data.errors import DataError, LabelError, ShapeError, failure_reason
from edge_runtime.data.files import load_csv, load_npz, parse_label_column, read_csv, read_npz
from edge_runtime.data.labels import absent_classes, describe_absent
from edge_runtime.data.partition import hold_out
from edge_runtime.data.sources import load_source
from edge_runtime.device_config import DataSection, DeviceConfig
from edge_runtime.local_training import LocalDataSource, load_local_data, model_arrays
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.errors import ShapeMismatchError
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import make_manifest, publish_model
from tests.helpers import INSECURE, INSECURE_TOML, Recorder, watch_presence
from tests.test_agent import FED as AGENT_FED
from tests.test_agent import TOPICS as AGENT_TOPICS
from tests.test_agent import GatewayStandIn, task, trainable_spec


def write_rows(path: Path, rows: list[list[object]], header: list[str] | None = None, mode: str = "w") -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in r) for r in rows]
    with path.open(mode, encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def digit_rows(digits_x: np.ndarray, labels: np.ndarray) -> list[list[object]]:
    return [[*(f"{v:g}" for v in x), int(y)] for x, y in zip(digits_x, labels, strict=True)]


# -- CSV layouts ---------------------------------------------------------------------------------------------
def test_csv_header_named_label_column_in_the_middle(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "kitchen.csv", [[0.5, "walk", 1], [1.5, "sit", 2], [2.5, "walk", 3]], ["ax", "act", "ay"])
    for column in ("act", 1, -2):
        ds = load_csv(f, column).train
        assert ds.x.tolist() == [[0.5, 1], [1.5, 2], [2.5, 3]]
        assert ds.classes == ["sit", "walk"] and ds.y.tolist() == [1, 0, 1]
        assert ds.label_field == "column 1 ('act')" and ds.origin == str(f)


def test_csv_without_header_takes_the_last_column_and_integer_labels_are_class_numbers(tmp_path: Path) -> None:
    # 3.0 (what pandas writes for an integer column) and 3 are one class; class 2 is absent, yet has an output.
    f = write_rows(tmp_path / "d.csv", [[0.1, 0.2, 0], [0.3, 0.4, "3.0"], [0.5, 0.6, 1], [0.7, 0.8, 3]])
    ds = load_csv(f).train
    assert ds.classes == ["0", "1", "2", "3"] and ds.y.tolist() == [0, 3, 1, 3]
    assert absent_classes(ds.y, ds.classes) == ["2"]
    assert describe_absent(["2"], ds.classes) == "labels 0..3 expected, 2 absent"
    # Ten or more classes sort as numbers, not as text ("10" after "9").
    g = write_rows(tmp_path / "g.csv", [[i, i] for i in range(12)])
    assert load_csv(g).train.classes == [str(i) for i in range(12)]


def test_label_column_option_as_typed() -> None:
    assert parse_label_column("3") == 3 and parse_label_column("-1") == -1
    assert parse_label_column("activity") == "activity" and parse_label_column("none") is None


@pytest.mark.parametrize(
    ("text", "column", "message", "kind"),
    [
        ("a,b,label\n1,2,x\n3,,y\n", -1, r"line 3, column 1 \('b'\): is empty \(missing values", DataError),
        ("1,2,x\n3,4\n", -1, r"line 2: 2 columns, line 1 has 3", DataError),
        ("a,b,label\n1,2,x\n", 5, r"label_column 5 is outside its 3 columns \(0\.\.2, or -3\.\.-1\)", DataError),
        ("a,b,label\n1,2,x\n", "activity", r"label_column 'activity' is not in the header \(a, b, label\)", DataError),
        ("1,2,x\n", "label", r"label_column 'label' names a column, but the file has no header row", DataError),
        ("", -1, r"no rows", DataError),
        ("a,b,label\n", -1, r"a header row and no data rows", DataError),
        ("1,2,x\n3,4,\n", -1, r"line 2, column 2: the label is empty", DataError),
        ("1,inf,x\n", -1, r"line 1, column 1: 'inf' is not a finite number", DataError),
        # The label column points at a measurement: thousands of distinct "classes".
        ("".join(f"{i},{i * 0.37:.3f}\n" for i in range(1500)), -1, r"1500 distinct labels .* not the label column",
         LabelError),
    ],
)  # fmt: skip
def test_csv_refusals_name_the_file_line_and_column(
    tmp_path: Path, text: str, column: int | str, message: str, kind: type[DataError]
) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(kind, match=message) as refused:
        load_csv(f, column)
    assert str(refused.value).startswith(str(f))
    assert refused.value.reason == (wire.FailureReason.LABELS if kind is LabelError else wire.FailureReason.NO_DATA)


def test_a_missing_file_is_no_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"gone\.csv: no such csv file") as refused:
        load_source(str(tmp_path / "gone.csv"))
    assert refused.value.reason == wire.FailureReason.NO_DATA


def test_a_last_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    f = tmp_path / "log.csv"
    f.write_text("1,2,a\n3,4,b\n5,")  # a logger is half way through its third row
    assert len(read_csv(f).x) == 2
    f.write_text("1,2,a\n3,4,b\n5,6,a\n7,")
    assert len(read_csv(f).x) == 3
    f.write_text("1,2,a\n3,4,b\n5,\n")  # ended by a newline: a real row, and a broken one
    with pytest.raises(DataError, match=r"line 3: 2 columns, line 1 has 3"):
        read_csv(f)


# -- NPZ layouts ---------------------------------------------------------------------------------------------
def test_npz_keys_classes_and_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(6, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "w.npz", x=windows, y=np.array([0, 2, 2, 0, 2, 0]), classes=np.array(["idle", "on", "off"]))
    ds = load_npz(tmp_path / "w.npz").train
    assert ds.x.shape == (6, 16, 3) and ds.classes == ["idle", "on", "off"] and ds.y.tolist() == [0, 2, 2, 0, 2, 0]
    assert absent_classes(ds.y, ds.classes) == ["on"]
    np.savez(tmp_path / "s.npz", X_train=windows[:4], y_train=np.array(["b", "a", "b", "a"]), X_test=windows[4:],
             y_test=np.array(["c", "a"]))  # fmt: skip
    split = load_npz(tmp_path / "s.npz")
    assert split.train.classes == split.test.classes == ["a", "b", "c"] and split.test.y.tolist() == [2, 0]
    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, x=windows)
    assert read_npz(unlabelled).labels is None
    with pytest.raises(DataError, match=r"u\.npz: has no labels \(no key 'y'\)"):
        load_npz(unlabelled)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"z": np.zeros(3)}, r"needs arrays x, y or X_train, y_train, X_test, y_test; has \['z'\]"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, r"key 'y': expected 4 labels \(one per row of 'x'\)"),
        ({"x": np.array([["a", "b"]]), "y": np.zeros(1)}, r"key 'x': expected numbers shaped"),
        ({"x": np.array([[1.0, np.nan]]), "y": np.zeros(1)}, r"key 'x': sample 0 holds NaN"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 5]), "classes": np.array(["a", "b"])},
         r"key 'y': with a 'classes' array, labels are its indices 0\.\.1"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "classes": np.array(["a", "a"])},
         r"key 'classes': class names \['a'\] appear more than once"),
        ({"x": np.zeros((2, 2)), "y": np.array([{}, {}], dtype=object)}, r"key 'y': Object arrays cannot be loaded"),
    ],
)  # fmt: skip
def test_npz_refusals_name_the_file_and_key(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=message) as refused:
        load_npz(f)
    assert str(refused.value).startswith(str(f))


def test_a_torn_or_single_array_npz_is_named(tmp_path: Path) -> None:
    torn = tmp_path / "torn.npz"
    np.savez(torn, x=np.zeros((50, 4)), y=np.zeros(50))
    torn.write_bytes(torn.read_bytes()[:100])
    with pytest.raises(DataError, match=r"torn\.npz: not a readable \.npz file .*rename it"):
        load_npz(torn)
    single = tmp_path / "single.npz"
    with single.open("wb") as fh:
        np.save(fh, np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"single\.npz: holds a single array"):
        load_npz(single)


# -- against a model: shapes and labels, typed for the failure report ----------------------------------------
def test_data_that_does_not_fit_the_model_names_the_file_and_says_why(
    tmp_path: Path, digits_mlp: Graph, digits
) -> None:
    x, y = digits.test.x[:20], digits.test.y[:20]
    good = load_csv(write_rows(tmp_path / "good.csv", digit_rows(x, y))).train
    xq, yq = model_arrays(digits_mlp, good)
    assert xq.shape == (20, 64) and xq.dtype == np.int8 and yq.tolist() == y.tolist()

    narrow = load_csv(write_rows(tmp_path / "narrow.csv", digit_rows(x[:, :63], y))).train
    with pytest.raises(ShapeError, match=r"narrow\.csv: samples of 63 values .* input 'input' takes 64") as shape:
        model_arrays(digits_mlp, narrow)
    assert shape.value.reason == wire.FailureReason.SHAPE and isinstance(shape.value, ShapeMismatchError)

    cats = load_csv(write_rows(tmp_path / "cats.csv", [[*r[:-1], "cat"] for r in digit_rows(x, y)], [
        *(f"px{i}" for i in range(64)), "animal"])).train  # fmt: skip
    with pytest.raises(LabelError, match=r"cats\.csv column 64 \('animal'\): labels \['cat'\] are not classes") as lab:
        model_arrays(digits_mlp, cats)
    assert failure_reason(lab.value) == wire.FailureReason.LABELS
    assert failure_reason(shape.value) == wire.FailureReason.SHAPE
    assert failure_reason(ShapeMismatchError("input 0", (1, 64), (1, 3))) == wire.FailureReason.SHAPE
    assert failure_reason(DataError("x")) == wire.FailureReason.NO_DATA
    assert failure_reason(RuntimeError("x")) is None


# -- holdout ---------------------------------------------------------------------------------------------------
def test_holdout_keeps_each_rows_side_as_the_file_grows(digits) -> None:
    ds = digits.train
    small_train, small_held = hold_out(ds.subset(np.arange(300)), 0.25, seed=4, fallback=ds.empty())
    big_train, big_held = hold_out(ds.subset(np.arange(600)), 0.25, seed=4, fallback=ds.empty())
    assert 0.15 < len(small_held) / 300 < 0.35
    # The first 300 rows fall on the same sides whether or not 300 more were appended.
    np.testing.assert_array_equal(big_held.x[: len(small_held)], small_held.x)
    np.testing.assert_array_equal(big_train.x[: len(small_train)], small_train.x)
    assert hold_out(ds.subset(np.arange(3)), 0.01, 0, ds.empty())[1].x.shape[0] == 1  # each side gets one
    train, evaluate = hold_out(ds, 0.0, 0, digits.test)
    assert train is ds and evaluate is digits.test


@pytest.mark.parametrize("holdout", [0.0, 0.3])
def test_holdout_is_honoured_for_own_files(tmp_path: Path, digits, holdout: float) -> None:
    f = write_rows(tmp_path / "d.csv", digit_rows(digits.train.x[:200], digits.train.y[:200]))
    np.savez(tmp_path / "d.npz", x=digits.train.x[:200], y=digits.train.y[:200])
    for source in (f, tmp_path / "d.npz"):
        local = load_local_data(DataSection(source=str(source), holdout=holdout))
        assert len(local.train) + len(local.evaluate) == 200
        if holdout == 0:
            assert len(local.evaluate) == 0  # a file with no test part: train on all of it
        else:
            assert 0.2 < len(local.evaluate) / 200 < 0.4


def test_holdout_on_a_source_with_a_test_part(tmp_path: Path, digits) -> None:
    np.savez(tmp_path / "s.npz", X_train=digits.train.x[:100], y_train=digits.train.y[:100],
             X_test=digits.test.x[:30], y_test=digits.test.y[:30])  # fmt: skip
    assert len(load_local_data(DataSection(source=str(tmp_path / "s.npz"), holdout=0.0)).evaluate) == 30
    local = load_local_data(DataSection(source=str(tmp_path / "s.npz"), holdout=0.5))
    assert len(local.train) + len(local.evaluate) == 100  # the held-out share comes from the device's own samples


# -- re-reading -----------------------------------------------------------------------------------------------
def test_the_source_rereads_a_changed_file_and_keeps_the_last_good_data_when_it_breaks(
    tmp_path: Path, digits
) -> None:
    f = write_rows(tmp_path / "d.csv", digit_rows(digits.train.x[:100], digits.train.y[:100]))
    source = LocalDataSource(DataSection(source=str(f), holdout=0.2))
    first = source.current()
    assert source.current() is first and not source.changed() and source.reads == 1
    write_rows(f, digit_rows(digits.train.x[100:150], digits.train.y[100:150]), mode="a")
    assert source.changed()
    grown = source.current()
    assert len(grown.train) + len(grown.evaluate) == 150 and source.reads == 2
    np.testing.assert_array_equal(grown.evaluate.x[: len(first.evaluate)], first.evaluate.x)  # same rows held out

    with f.open("a") as fh:
        fh.write("1,2,3\n")  # a row of the wrong width, ended: a real error
    with pytest.raises(DataError, match=r"d\.csv line 151: 3 columns, line 1 has 65"):
        source.current()
    assert not source.changed()  # remembered: the idle loop does not re-read the broken file ...
    with pytest.raises(DataError, match="line 151"):
        source.current()  # ... but every task still reports it
    assert source.reads == 2

    f.unlink()
    with pytest.raises(DataError, match=r"d\.csv: no such csv file") as gone:
        source.current()
    assert gone.value.reason == wire.FailureReason.NO_DATA

    # Written elsewhere and renamed into place (the way to replace an npz or csv whole): a new inode.
    tmp = write_rows(tmp_path / ".d.csv.tmp", digit_rows(digits.train.x[:40], digits.train.y[:40]))
    os.replace(tmp, f)
    assert source.changed()
    back = source.current()
    assert len(back.train) + len(back.evaluate) == 40 and source.reads == 3


# -- a real device through a real broker: new rows between two tasks, and while idle ------------------------
def csv_device_config(broker: MosquittoProcess, storage: Path, source: Path) -> DeviceConfig:
    return DeviceConfig.from_mapping(
        {
            "device": {"id": "dev-csv", "federation": AGENT_FED, "storage": str(storage), "trainable_layers": 1},
            "data": {"source": str(source), "holdout": 0.25, "label_column": "digit"},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
        },
        env={},
    )


def test_a_device_takes_up_rows_appended_between_two_tasks(
    broker: MosquittoProcess, tmp_path: Path, digits, digits_mlp: Graph, backend: Backend
) -> None:
    header = [*(f"px{i}" for i in range(64)), "digit"]
    f = write_rows(tmp_path / "own.csv", digit_rows(digits.train.x[:120], digits.train.y[:120]), header)
    model = write_graph(digits_mlp)
    manifest, chunks = make_manifest(model, trainable_spec(digits_mlp), 4096, federation=AGENT_FED)
    gateway = GatewayStandIn(broker, manifest)
    publish_model(gateway.link, AGENT_TOPICS, manifest, chunks)
    agent = DeviceAgent(csv_device_config(broker, tmp_path / "dev", f), backend=backend).start()
    try:
        first_train = len(agent.data.train)
        assert gateway.wait(lambda: (p := gateway.presence.get("dev-csv")) is not None and p.capabilities is not None
                            and p.capabilities.model_version == manifest.version)  # fmt: skip
        assert gateway.presence["dev-csv"].capabilities.samples == first_train  # type: ignore[union-attr]

        gateway.send_task("dev-csv", wire.encode(task(manifest.version, round_=1)))
        assert gateway.wait(lambda: len(gateway.updates) == 1)
        assert gateway.updates[0].samples == first_train
        assert gateway.updates[0].metrics["eval_samples"] == 120 - first_train

        write_rows(f, digit_rows(digits.train.x[120:200], digits.train.y[120:200]), mode="a")
        gateway.send_task("dev-csv", wire.encode(task(manifest.version, round_=2)))
        assert gateway.wait(lambda: len(gateway.updates) == 2)
        second = gateway.updates[1]
        assert second.samples > first_train and second.samples + second.metrics["eval_samples"] == 200
        # The new count is announced, so the gateway's registry (and its min_samples) sees it.
        assert gateway.wait(lambda: gateway.presence["dev-csv"].capabilities.samples == second.samples)  # type: ignore[union-attr]
        assert agent.data_source is not None and agent.data_source.reads == 2
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def test_device_run_takes_up_new_rows_while_idle_and_names_a_vanished_file(
    broker: MosquittoProcess, tmp_path: Path, digits
) -> None:
    f = write_rows(tmp_path / "own.csv", digit_rows(digits.train.x[:60], digits.train.y[:60]))
    config = tmp_path / "device.toml"
    config.write_text(f"""
[device]
id = "pi-csv"
federation = "{AGENT_FED}"
storage = "{tmp_path / "storage"}"

[data]
source = "{f}"
holdout = 0.0

[broker]
url = "{broker.url}"
backoff_base = 0.05
backoff_cap = 0.5
{INSECURE_TOML}""")
    watcher, seen = watch_presence(broker, AGENT_TOPICS.presence("pi-csv"), "watcher")
    assert watcher.wait_ready(60)
    proc = subprocess.Popen([sys.executable, "-m", "tinyfed", "device", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    log: Recorder[str] = Recorder()
    reader = threading.Thread(target=lambda: [log.append(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()

    def announced(n: int) -> Callable[[list[wire.Presence]], bool]:
        return lambda got: any(p.online and p.capabilities is not None and p.capabilities.samples == n for p in got)

    try:
        seen.wait_until(announced(60), 60, "a birth announcing 60 samples")
        write_rows(f, digit_rows(digits.train.x[60:100], digits.train.y[60:100]), mode="a")
        seen.wait_until(announced(100), 60, "a new birth announcing the 40 appended rows")
        f.unlink()
        log.wait_until(lambda lines: any("cannot read its data" in ln for ln in lines), 60, "the vanished file named")
        write_rows(f, digit_rows(digits.train.x[:30], digits.train.y[:30]))
        seen.wait_until(announced(30), 60, "a birth once the file is back")
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()  # type: ignore[union-attr]
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.stop()
    reader.join(10)
    assert proc.returncode == 0, "".join(log.items)
    assert "60 training samples" in out and "stopped cleanly" in out
    errors = [ln for ln in log.items if "cannot read its data" in ln]
    assert len(errors) == 1 and f"{f}: no such csv file" in errors[0]


def test_label_column_in_device_toml_and_the_environment(tmp_path: Path) -> None:
    from edge_runtime.config import ConfigError

    path = tmp_path / "device.toml"
    path.write_text('[data]\nsource = "own.csv"\nlabel_column = "activity"\n')
    assert DeviceConfig.load(path, env={}).data.label_column == "activity"
    assert DeviceConfig.load(path, env={"TINYFED_DATA_LABEL_COLUMN": "0"}).data.label_column == 0
    assert DeviceConfig.from_mapping({}, env={}).data.label_column == -1
    with pytest.raises(ConfigError, match=r"device\.toml \[data\] label_column: expected int or str, got a boolean"):
        DeviceConfig.from_mapping({"data": {"label_column": True}}, "device.toml", env={})


def test_the_data_digest_changes_with_the_labels_not_only_with_the_row_count(tmp_path: Path) -> None:
    """A device announces it (Capabilities.data), so a gateway that left it out after a failure takes it back."""
    from edge_runtime.data.dataset import Dataset
    from edge_runtime.local_training import LocalData

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    wrong = LocalData(Dataset(x, np.array([0, 1, 0, 1]), ["cat", "dog"]), Dataset(x[:1], np.array([0]), ["cat", "dog"]))
    fixed = LocalData(Dataset(x, np.array([0, 1, 1, 1]), ["cat", "dog"]), Dataset(x[:1], np.array([0]), ["cat", "dog"]))
    assert len(wrong.digest) == 16 and wrong.digest != fixed.digest
    assert wrong.digest == LocalData(wrong.train, wrong.evaluate).digest
