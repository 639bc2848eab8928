"""``tinyfed device train``: local training with int8 accuracy before and after, per backend."""

from __future__ import annotations

import argparse
import sys
import time

from ..data.dataset import DataError
from ..data.files import parse_label_column
from ..data.partition import hold_out, select_group
from ..data.sources import load_source
from ..local_training import model_arrays
from ..model.backends import available_backends, get_backend
from ..model.backends.base import Backend
from ..model.errors import BackendUnavailableError
from ..model.files import read_model
from ..model.graph import model_version
from ..model.writer import write_graph
from ..paths import check_output_file, write_file
from ..progress import ProgressBar
from ..train.evaluate import accuracy, int8_predictions
from ..train.trainer import TrainConfig, Trainer, cut_for_last_layers


def resolve_backends(name: str) -> list[Backend]:
    names = available_backends() if name == "all" else [name]
    if not names:
        raise DataError("--backend all: no interpreter backend is installed: pip install 'tinyfed[litert]'")
    try:
        return [get_backend(n) for n in names]
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"--backend {name}: {exc}") from exc


def train(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_file(args.out, "--out")  # now, not after minutes of training
    model_bytes, graph = read_model(args.model, "--model")
    backends = resolve_backends(args.backend)
    if args.holdout is not None and not 0.0 <= args.holdout < 1.0:
        raise DataError(f"--holdout {args.holdout}: a share of the samples, in [0, 1)")
    split = load_source(args.data, seed=args.seed, label_column=parse_label_column(args.label_column))
    if args.group is not None:
        train_ds, eval_ds = select_group(
            split.train, split.test, args.group, args.holdout or 0.0, args.holdout_order, args.seed
        )
    else:  # a source without a test part (a user's own file) holds out a share by default
        holdout = args.holdout if args.holdout is not None else (0.0 if len(split.test) else 0.2)
        train_ds, eval_ds = hold_out(split.train, holdout, args.seed, split.test)
    if len(eval_ds) == 0:
        raise DataError(f"{eval_ds.where}: nothing to evaluate on: hold out a share with --holdout")
    x_train, y_train = model_arrays(graph, train_ds)
    x_eval, y_eval = model_arrays(graph, eval_ds)
    print(
        f"model {args.model} ({model_version(model_bytes)[:16]}), train {len(train_ds)} samples "
        f"({train_ds.name}), evaluate {len(eval_ds)} ({eval_ds.name})"
    )

    before = {b.name: accuracy(int8_predictions(b, model_bytes, x_eval), y_eval) for b in backends}
    cut = cut_for_last_layers(graph, args.trainable_layers)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        momentum=args.momentum,
        prox_mu=args.prox_mu,
        seed=args.seed,
    )
    trainer = Trainer(graph, cut=cut, backend=backends[0], config=config, personal_layers=args.personal_layers)
    batches = max(1, -(-len(train_ds) // args.batch_size))
    t0 = time.perf_counter()
    trainer.fit(x_train, y_train, progress=ProgressBar(args.epochs, batches))
    seconds = time.perf_counter() - t0
    float_acc = accuracy(trainer.predict_float(trainer.features(x_eval)), y_eval)
    new_bytes = write_graph(trainer.export())
    after = {b.name: accuracy(int8_predictions(b, new_bytes, x_eval), y_eval) for b in backends}

    trainable = len(graph.operators) - cut
    print(
        f"trained {trainable} of {len(graph.operators)} operators (cut at #{cut}) for {args.epochs} epochs "
        f"in {seconds:.1f} s ({args.epochs * len(train_ds) / seconds:.0f} samples/s)"
    )
    print(f"{'backend':<16}{'int8 before':>12}{'int8 after':>12}")
    for b in backends:
        print(f"{b.name:<16}{before[b.name]:>12.4f}{after[b.name]:>12.4f}")
    print(f"{'float tail':<16}{'':>12}{float_acc:>12.4f}")
    if args.out:
        write_file(args.out, new_bytes, "--out")
        print(f"wrote {args.out} (version {model_version(new_bytes)[:16]})")
    sys.stdout.flush()
    return 0
