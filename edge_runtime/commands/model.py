"""``tinyfed model build|inspect``."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from ..data import labels as label_rules
from ..data.dataset import Dataset
from ..data.errors import DataError, ShapeError
from ..data.files import parse_label_column
from ..data.sources import load_source
from ..model.files import read_model
from ..model.graph import model_version
from ..model.info import ModelInfo
from ..model.writer import write_graph
from ..paths import check_output_file, write_file
from ..train.build import build_model


def parse_window(text: str) -> tuple[int, int]:
    """``--window 128x9``: steps x channels of one window."""
    try:
        steps, channels = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise DataError(f"--window {text!r}: expected STEPSxCHANNELS, for example 128x9") from exc
    if steps < 1 or channels < 1:
        raise DataError(f"--window {text!r}: steps and channels must be at least 1")
    return steps, channels


def sample_for_model(args: argparse.Namespace) -> Dataset:
    """The build sample: the source's training part, its classes as declared, its samples as windows if asked."""
    split = load_source(args.data, seed=args.seed, label_column=parse_label_column(args.label_column))
    ds = split.train
    if args.classes:
        declared = label_rules.declared(args.classes.split(","), "--classes")
        names = np.array(ds.classes, dtype=str)[ds.y]
        y = label_rules.encode(names, declared, f"{ds.labels_at} (against --classes)")
        ds = Dataset(ds.x, y, declared, ds.groups, ds.name, ds.origin, ds.label_field)
    if args.window:
        steps, channels = parse_window(args.window)
        per_sample = int(np.prod(ds.x.shape[1:]))
        if per_sample != steps * channels:
            raise ShapeError(f"{ds.where}: samples of {per_sample} values do not make windows of --window "
                             f"{steps}x{channels} ({steps * channels} values)")  # fmt: skip
        ds = Dataset(ds.x.reshape(len(ds), steps, channels), ds.y, ds.classes, ds.groups, ds.name, ds.origin,
                     ds.label_field)  # fmt: skip
    if args.arch == "cnn1d" and ds.x.ndim != 3:
        raise ShapeError(f"{ds.where}: cnn1d takes windows [samples, steps, channels], these samples are "
                         f"{list(ds.x.shape[1:])}: an npz whose x is [N, steps, channels], or --window STEPSxCHANNELS "
                         "for rows of steps x channels values (docs/data.md)")  # fmt: skip
    return ds


def build(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")  # before the data is read and the model calibrated
    ds = sample_for_model(args)
    graph = build_model(args.arch, ds.x, ds.classes, seed=args.seed, dataset=args.data)
    data = write_graph(graph)
    counts = np.bincount(ds.y, minlength=len(ds.classes))
    print(f"{len(ds.classes)} classes learned from {len(ds)} samples of {ds.labels_at} (output: class, samples):")
    width = max(len(c) for c in ds.classes)
    for i, (name, n) in enumerate(zip(ds.classes, counts, strict=True)):
        print(f"  {i:>3}  {name:<{width}}  {n:>6}{'  (none in the sample)' if n == 0 else ''}")
    absent = label_rules.absent_classes(ds.y, ds.classes)
    if absent:
        print(
            f"tinyfed: warning: {ds.labels_at}: {label_rules.describe_absent(absent, ds.classes)} in this sample. "
            "The model keeps an output for each, learned only from devices that hold it; a label that is not one "
            "of these classes is refused on every device, so name every class with --classes if some are missing",
            file=sys.stderr,
        )
    features = ds.x.shape[-1]
    print(f"input {list(ds.x.shape[1:])}, normalised by the mean and standard deviation of each of its {features} "
          f"{'channels' if ds.x.ndim == 3 else 'features'} over these samples (stored in the model)")  # fmt: skip
    write_file(args.out, data, "--out")
    print(f"wrote {args.out} ({len(data)} bytes, version {model_version(data)[:16]})")
    return 0


def _short(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"


def inspect(args: argparse.Namespace) -> int:
    data, graph = read_model(args.model, "model", int8=False)  # inspecting a float model is fine
    info = ModelInfo.from_graph(graph)
    print(f"{args.model}: {len(data)} bytes, sha256 {model_version(data)}")
    print(f"description: {graph.description!r}  architecture: {info.architecture}  built from: {info.dataset or '-'}")
    print(f"classes ({len(info.classes)}): {', '.join(info.classes) if info.classes else '- (outputs by index)'}")
    if info.input_mean:
        print(f"input normalisation over {len(info.input_mean)} features: mean {_short(info.input_mean)} "
              f"std {_short(info.input_std)}")  # fmt: skip
    else:
        print("input normalisation: none stored (samples are quantised as given)")
    print(f"inputs {graph.inputs} outputs {graph.outputs}")
    print("operators:")
    for i, op in enumerate(graph.operators):
        opts = {k: v for k, v in op.options.items() if not k.startswith("_")}
        print(f"  #{i:<3} {op.opcode:<20} in {op.inputs} out {op.outputs} {opts}")
    print("tensors:")
    for i, t in enumerate(graph.tensors):
        q = ""
        if t.quant is not None:
            if t.quant.per_channel:
                q = f"per-channel({t.quant.scale.size}, axis {t.quant.axis})"
            else:
                q = f"scale {float(t.quant.scale[0]):.6g} zp {int(t.quant.zero_point[0])}"
        kind = "const" if t.is_constant else "act"
        size = int(np.prod(t.shape)) * t.dtype.itemsize if t.shape else t.dtype.itemsize
        print(f"  {i:<3} {t.name:<36} {t.dtype!s:<8} {t.shape!s:<18} {kind:<5} {size:>7} B  {q}")
    return 0
