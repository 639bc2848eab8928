#!/usr/bin/env python3
"""Instructions per inference and per training task of the C board, counted by QEMU (-icount shift=0).

    TINYFED_DATA_DIR=... .venv/bin/python firmware/tools/costs.py digits|har [--machine mps2-an386]

With ``-icount shift=0`` QEMU advances its virtual clock by one nanosecond per guest instruction, and the
firmware times inference and training on that clock (SysTick), so the microseconds it reports (INFER_RESULT's
``micros``, the LOG after an UPDATE) times 1000 are instruction counts, to 40 instructions (one 25 MHz tick).
On a Cortex-M4 most of these instructions take one cycle; loads, multiplies-accumulate and branches more.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.device_config import DataSection
from edge_runtime.local_training import load_local_data
from edge_runtime.model.info import quantize_input
from edge_runtime.model.writer import write_graph
from edge_runtime.train.build import build_model
from firmware_bridge.driver import BoardDriver
from hil.qemu import start_board


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["digits", "har"])
    parser.add_argument("--machine", default="mps2-an386")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if args.model == "har":
        data = load_local_data(DataSection(source="har", group=1))
        graph = build_model("cnn1d", data.train.x, data.train.classes, seed=0)
    else:
        data = load_local_data(DataSection(source="digits", shard="0/10"))
        graph = build_model("mlp", data.train.x, data.train.classes, seed=0)
    model = write_graph(graph)
    with tempfile.TemporaryDirectory() as tmp:
        board = start_board(args.machine, Path(tmp), f"cost-{args.model}", data, None, icount=True)
        try:
            with BoardDriver(board.path, 115200, answer_timeout=600) as driver:
                driver.hello()
                driver.send_model(model)
                x = quantize_input(graph, data.evaluate.x[:10])
                micros = [driver.infer(x[i]).micros for i in range(len(x))]
                task = wire.Task(
                    task_id=hashlib.sha256(str(time.time_ns()).encode()).digest()[:16], round=1,
                    base_version=hashlib.sha256(model).digest(), epochs=args.epochs, learning_rate=0.05,
                    density=0.1, deadline=int(time.time()) + 3600, report=False,
                )  # fmt: skip
                driver.train(task)
                driver.status()
                logs = [log.text for log in driver.logs]
        finally:
            board.stop()
    trained = next(text for text in logs if text.startswith("trained"))
    train_us = int(re.search(r"in (\d+) us", trained).group(1))  # type: ignore[union-attr]
    steps = args.epochs * -(-len(data.train) // 32)
    print(f"{args.model} on {args.machine}: model {len(model)} B, {len(data.train)} training samples")
    print(f"inference: {int(np.median(micros)) * 1000:,} instructions (median of {len(micros)})")
    infer = int(np.median(micros)) * 1000
    sgd = max(0, train_us * 1000 - infer * len(data.train))  # less one backbone pass per sample (an estimate)
    print(
        f"training task ({args.epochs} epoch(s): the backbone once per sample, then {steps} SGD steps of batch 32): "
        f"{train_us * 1000:,} instructions; less {len(data.train)} inferences, about {sgd // steps:,} per step"
    )
    for text in logs:
        print(f"board: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
