"""``tinyfed model`` and ``tinyfed device``: the core's and the device's commands, registered as entry points.

Options only: each handler imports its implementation when run, so listing
the commands loads neither an interpreter nor the MQTT client.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..command import Command, add_actions


def _model_build(args: argparse.Namespace) -> int:
    from .model import build

    return build(args)


def _model_inspect(args: argparse.Namespace) -> int:
    from .model import inspect

    return inspect(args)


def _model_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    return predict(args)


def _device_train(args: argparse.Namespace) -> int:
    from .device import train

    return train(args)


def _device_run(args: argparse.Namespace) -> int:
    from .device_run import run

    return run(args)


def _add_label_column(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-column",
        default="-1",
        metavar="COLUMN",
        help="a CSV's label column: its header name or index, negative from the end (-1 is the last); "
        "'none' for a file without labels (model predict)",
    )


def _configure_model(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser)
    b = actions.add_parser("build", help="build a fresh int8 model calibrated on data")
    b.add_argument(
        "--arch", choices=("mlp", "cnn1d"), required=True, help="mlp for feature rows, cnn1d for windowed time series"
    )
    b.add_argument(
        "--data",
        required=True,
        help="a sample of the federation's data: digits, har, cmapss, ucr:NAME, har-uci:DIR, FILE.npz, FILE.csv "
        "(docs/data.md); the model's classes and input normalisation come from it",
    )
    _add_label_column(b)
    b.add_argument(
        "--classes",
        help="every class, comma-separated, in output order (default: the labels in the sample; integer labels "
        "are class numbers from the smallest to the largest)",
    )
    b.add_argument(
        "--window",
        metavar="STEPSxCHANNELS",
        help="read each sample as a window of STEPS time steps of CHANNELS values (a CSV row holds them step by "
        "step); cnn1d needs windows",
    )
    b.add_argument("--out", type=Path, required=True, help="the .tflite file to write (its folder must exist)")
    b.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation (and digits' split)")
    b.set_defaults(handler=_model_build)
    p = actions.add_parser(
        "predict",
        help="run a model on data: accuracy and confusion matrix, or predictions; per-sample CSV with --out",
        description="Run a model on data as a device does (its stored normalisation, int8, a real interpreter). "
        "With labels: accuracy and a confusion matrix; without (a CSV as wide as the model's input, an npz "
        "without y): the predicted classes. Samples: every row of a .csv/.npz (X_test of a split npz), the test "
        "part of a named set.",
    )
    p.add_argument("--model", type=Path, required=True, help="a .tflite tinyfed wrote (or any int8 classifier)")
    p.add_argument("--data", required=True, help="FILE.csv, FILE.npz, or digits, har, cmapss, ucr:NAME, har-uci:DIR")
    _add_label_column(p)
    p.add_argument("--out", type=Path, help="write one CSV row per sample: label, predicted class, probabilities")
    p.add_argument(
        "--backend", default="auto", help="litert, tflite-runtime, micro, or auto: the first installed (default)"
    )
    p.set_defaults(handler=_model_predict)
    i = actions.add_parser("inspect", help="print tensors, operators, quantisation and version")
    i.add_argument("model", type=Path, help="a .tflite file (float models are shown too)")
    i.set_defaults(handler=_model_inspect)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=5, help="passes over the training data")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (cosine-decayed)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--batch-size", type=int, default=32, help="samples per SGD step")
    p.add_argument("--prox-mu", type=float, default=0.0, help="FedProx proximal term")
    p.add_argument("--seed", type=int, default=0, help="shuffling and the held-out split")


def _configure_device(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(parser)
    t = actions.add_parser("train", help="train a model on local data and report int8 accuracy")
    t.add_argument("--model", type=Path, required=True, help="the int8 .tflite model to start from")
    t.add_argument("--data", required=True, help="digits, har, cmapss, ucr:NAME, har-uci:DIR, FILE.npz, FILE.csv")
    _add_label_column(t)
    t.add_argument("--out", type=Path, help="write the trained model here (its folder must exist)")
    t.add_argument("--backend", default="all", help="litert, tflite-runtime, micro, or all installed")
    t.add_argument(
        "--trainable-layers", type=int, default=0, help="train only the last N weighted layers (0: the whole model)"
    )
    t.add_argument(
        "--personal-layers",
        type=int,
        default=0,
        help="keep the last N trainable layers local (excluded from the update)",
    )
    t.add_argument("--group", type=int, help="use only this natural group (HAR subject, engine)")
    t.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="evaluate on this share of the samples (of --group's), train on the rest; default 0 (evaluate on the "
        "source's test part) where the source has one, 0.2 otherwise (a CSV or an npz of x and y)",
    )
    t.add_argument(
        "--holdout-order",
        choices=("random", "time"),
        default="random",
        help="hold out a seeded random share, or the most recent samples",
    )
    _add_train_options(t)
    t.set_defaults(handler=_device_train)
    r = actions.add_parser("run", help="join a federation: follow the model, train on tasks, send updates")
    r.add_argument("--config", type=Path, required=True, help="device.toml (keys overridable by TINYFED_<TABLE>_<KEY>)")
    r.add_argument("--keep-trying", action="store_true", help="wait for an unreachable broker instead of exiting 3")
    r.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    r.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="text (default) or one JSON object per line, for journald, Loki or jq")  # fmt: skip
    r.set_defaults(handler=_device_run)


MODEL = Command("model", "build, inspect and use int8 .tflite models", _configure_model)
DEVICE = Command("device", "the device side: train on local data, join a federation", _configure_device, ("device",))
