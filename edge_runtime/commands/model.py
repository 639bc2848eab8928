"""``tinyfed model build|inspect``."""

from __future__ import annotations

import argparse

import numpy as np

from ..data.sources import load_source
from ..model.files import read_model
from ..model.graph import model_version
from ..model.info import ModelInfo
from ..model.writer import write_graph
from ..paths import check_output_file, write_file
from ..train.build import build_model


def build(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")  # before the data is read and the model calibrated
    split = load_source(args.data, seed=args.seed)
    graph = build_model(args.arch, split.train.x, split.train.classes, seed=args.seed, dataset=args.data)
    data = write_graph(graph)
    write_file(args.out, data, "--out")
    print(f"wrote {args.out} ({len(data)} bytes, version {model_version(data)[:16]})")
    return 0


def inspect(args: argparse.Namespace) -> int:
    data, graph = read_model(args.model, "model", int8=False)  # inspecting a float model is fine
    info = ModelInfo.from_graph(graph)
    print(f"{args.model}: {len(data)} bytes, sha256 {model_version(data)}")
    print(f"description: {graph.description!r}  architecture: {info.architecture}  classes: {len(info.classes)}")
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
