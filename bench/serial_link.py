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

Model updates, whole against patch: the digits MLP's versions as the real
gateway publishes them after real rounds (tinyfed/population.py: the
gateway's round machinery and publisher, 100 simulated devices, FedAvgM, 10%
updates), with the publisher's default (every int8 code may move) and with
fl_digits' ``downlink_density = 0.05``. Each version after the first goes to
an emulated board at 115200 baud twice, whole (MODEL_BEGIN/DATA/COMMIT) and as
its patch (PATCH_BEGIN/DATA/COMMIT); the figures are the host's bytes on the
line (frames, acknowledgements the board sends are not counted: they are the
same few bytes per frame either way) and the seconds from BEGIN to the
board's answer to COMMIT, the board's apply, hash and load included, as
medians over the rounds.
"""

from __future__ import annotations

import itertools
import statistics
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


UPDATE_ROUNDS = 4  # versions after the first: one patch each
UPDATE_BAUD = 115200
DOWNLINKS = ((0.0, "default"), (0.05, "density5"))


def digits_versions(downlink_density: float, rounds: int, folder: Path) -> list[bytes]:
    """The digits MLP's published versions, oldest first: the initial model, then one per round."""
    from tinyfed.population import PopulationRound, PopulationSpec, run_population

    work = folder / f"population-{downlink_density}"
    work.mkdir()
    versions: list[bytes] = []

    def collect(_round: PopulationRound) -> None:  # the publisher's files, read while the run still has them
        for path in sorted(work.rglob("*.tflite"), key=lambda p: p.stat().st_mtime_ns):
            data = path.read_bytes()
            if data not in versions:
                versions.append(data)

    spec = PopulationSpec(devices=100, rounds=rounds, fraction=0.1, trainable_layers=0, score_every=rounds,
                          downlink_density=downlink_density)  # fmt: skip
    result = run_population(spec, on_round=collect, workdir=work)
    if versions[0] != result.initial_model:
        versions.insert(0, result.initial_model)
    return versions


def model_updates(versions: list[bytes], folder: Path, label: str) -> dict[str, Any]:
    """Each version after the first to one emulated board at 115200 baud as its patch; the first version, and the
    last back to the first, whole (every version has the same size, as a patch needs)."""
    from edge_runtime import wire
    from firmware_bridge.driver import BoardDriver
    from hil.board import BoardSpec, EmulatedBoard

    board = EmulatedBoard(folder / f"updates-{label}.flash", BoardSpec(baud=UPDATE_BAUD)).start()
    rows, wholes = [], []
    try:
        with BoardDriver(board.path, baud=UPDATE_BAUD, answer_timeout=120.0) as driver:
            driver.hello()
            wholes.append(driver.send_model(versions[0]))  # every version has the same size: a patch needs it
            for base, target in itertools.pairwise(versions):
                patch = wire.make_patch(base, target)
                assert patch is not None, "a version changed the model's layout"
                patched = driver.update_model(target, patch)
                assert patched.kind == "patch" and board.model_version == patch.target
                rows.append({"model_bytes": len(target), "changed_bytes": patch.count,
                             "patch_bytes": patched.payload_bytes, "patch_line_bytes": patched.line_bytes,
                             "patch_seconds": patched.seconds})  # fmt: skip
            wholes.append(driver.send_model(versions[0]))  # the last version back to the first, whole
    finally:
        board.stop()
    for row in rows:
        row["whole_line_bytes"] = statistics.median(w.line_bytes for w in wholes)
        row["whole_seconds"] = statistics.median(w.seconds for w in wholes)

    def median(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    return {"rows": rows, **{k: median(k) for k in rows[0]}}


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
        updates: dict[str, Any] = {}
        for density, label in DOWNLINKS:
            started = time.perf_counter()
            versions = digits_versions(density, UPDATE_ROUNDS, Path(tmp))
            run = model_updates(versions, Path(tmp), label)
            run["wall_seconds"] = time.perf_counter() - started
            updates[label] = run
            prefix = f"digits_update_{label}"
            figures[f"{prefix}_whole_line_bytes"] = run["whole_line_bytes"]
            figures[f"{prefix}_patch_line_bytes"] = run["patch_line_bytes"]
            figures[f"{prefix}_whole_seconds_115200"] = round(run["whole_seconds"], 3)
            figures[f"{prefix}_patch_seconds_115200"] = round(run["patch_seconds"], 3)
            figures[f"{prefix}_line_bytes_ratio"] = round(run["whole_line_bytes"] / run["patch_line_bytes"], 2)
            print(
                f"digits MLP update ({label} downlink, median of {len(run['rows'])} rounds): whole "
                f"{run['whole_line_bytes']:.0f} B on the line in {run['whole_seconds']:.2f} s, patch "
                f"{run['patch_line_bytes']:.0f} B in {run['patch_seconds']:.2f} s at {UPDATE_BAUD} baud "
                f"({run['changed_bytes']:.0f} of {run['model_bytes']:.0f} bytes changed)",
                flush=True,
            )
    path = write_result("serial_link", figures, {"model_bytes": len(model), "runs": runs, "updates": updates})
    print_table("serial_link", figures)
    print(f"wrote {path}")
    return figures


if __name__ == "__main__":
    main()
