"""``tinyfed demo``: the zero-setup job: build a model, train it on-device, score it per interpreter.

Uses HAR's raw windows with the 1D-CNN when the shared data folder is
present, scikit-learn's digits with the MLP otherwise, so a fresh machine
needs nothing beyond the package extras.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..data.sources import shared_data_dir


def demo(args: argparse.Namespace) -> int:
    from . import device, model

    data = args.data
    if data is None:
        folder = shared_data_dir()
        data = "har" if folder is not None and (folder / "har_raw.npz").is_file() else "digits"
    arch = "cnn1d" if data in ("har", "har-uci") or data.startswith("ucr:") else "mlp"
    epochs = args.epochs or (3 if arch == "cnn1d" else 20)
    print(f"tinyfed demo: {data} with the {arch} model, {epochs} local epochs")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / f"{data.replace(':', '_')}.tflite"
        model.build(argparse.Namespace(arch=arch, data=data, out=base, seed=0))
        trained = Path(tmp) / "trained.tflite"
        return device.train(
            argparse.Namespace(
                model=base,
                data=data,
                out=trained,
                backend="all",
                trainable_layers=0,
                personal_layers=0,
                group=None,
                holdout=0.0,
                holdout_order="random",
                epochs=epochs,
                lr=0.05 if arch == "mlp" else 0.02,
                momentum=0.9,
                batch_size=32,
                prox_mu=0.0,
                seed=0,
            )
        )
