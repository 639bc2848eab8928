"""Serial model transfer: effective throughput as a share of the line rate, clean and on a noisy line.

The HAR 1D-CNN (the largest model tinyfed ships, 40 KB) goes from the host
driver to a fresh emulated board over a real pty paced at the baud rate, at
115200 and 921600 baud, on a clean line and with a bit error rate of 1e-4
and 1e-3 on every byte in both directions. The figure is model bytes per
second over the line's 8N1 payload capacity (baud / 10): the whole
transfer, from MODEL_BEGIN to the board's answer to MODEL_COMMIT (which
includes the board hashing the slot and loading the model into TFLite
Micro). The baseline is the line itself; the goal is >= 0.9 when clean.

A noisy line is bounded: a transfer that has not finished in 120 s is
reported as what it had done by then (never the case on this machine).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, write_result

BAUDS = (115200, 921600)
NOISE = ((0.0, "clean"), (1e-4, "ber1e-4"), (1e-3, "ber1e-3"))


def model_bytes() -> bytes:
    import numpy as np

    from edge_runtime.model.writer import write_graph
    from edge_runtime.train.build import build_model

    rng = np.random.default_rng(1)
    t = np.linspace(0, 8 * np.pi, 128, dtype=np.float32)
    windows = np.sin(t[None, :, None] + rng.uniform(0, 6.3, (256, 1, 9))).astype(np.float32)
    return write_graph(build_model("cnn1d", windows, [str(i) for i in range(6)], seed=0))


def transfer(model: bytes, baud: int, ber: float, folder: Path) -> dict[str, Any]:
    from firmware_bridge.driver import BoardDriver
    from hil.board import BoardSpec, EmulatedBoard
    from hil.faults import FaultPlan

    faults = FaultPlan.parse(f"ber={ber},seed=1" if ber else "")
    board = EmulatedBoard(folder / f"{baud}-{ber}.flash", BoardSpec(baud=baud), faults=faults).start()
    try:
        with BoardDriver(board.path, baud=baud, answer_timeout=120.0, retries=12) as driver:
            driver.hello()
            report = driver.send_model(model)
            ok = board.model_version is not None
    finally:
        board.stop()
    line_rate = baud / 10
    return {
        "baud": baud,
        "ber": ber,
        "installed": ok,
        "seconds": report.seconds,
        "fraction": report.bytes_per_second / line_rate,
        "frames": report.frames,
        "retransmissions": report.retransmissions,
        "line_bytes_per_model_byte": report.line_bytes / report.size,
    }


def main(full: bool = False) -> dict[str, float]:
    model = model_bytes()
    figures: dict[str, float] = {}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for baud in BAUDS:
            for ber, label in NOISE:
                started = time.perf_counter()
                run = transfer(model, baud, ber, Path(tmp))
                run["wall_seconds"] = time.perf_counter() - started
                runs.append(run)
                suffix = "" if label == "clean" else f"_{label}"
                figures[f"line_rate_fraction_{baud}{suffix}"] = round(run["fraction"], 4)
                print(
                    f"{baud:>7} baud {label:>8}: {run['fraction']:.3f} of line rate, {run['seconds']:.2f} s, "
                    f"{run['frames']} frames, {run['retransmissions']} resent",
                    flush=True,
                )
    path = write_result("serial_link", figures, {"model_bytes": len(model), "runs": runs})
    print_table("serial_link", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
