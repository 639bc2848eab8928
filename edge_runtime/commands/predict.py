"""``tinyfed model predict --model M --data D``: a model on data, as a device would run it.

Prints the accuracy and a confusion matrix when the data has labels, the
predicted classes' counts when it has none, and with ``--out`` writes one
CSV row per sample (its label, the predicted class, each class's
probability). Which samples: every row of a user's .csv/.npz (the test part
of an npz with ``X_test``), the test part of a named set.
"""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.files import Samples, npz_parts, parse_label_column, read_csv, read_npz
from ..data.sources import load_source
from ..inference import Predictor
from ..storage import atomic_write


@dataclass
class Scored:
    labels: np.ndarray | None  # the true class names, when the data has them
    predicted: np.ndarray  # indices into the model's classes
    probabilities: np.ndarray


def read_samples(spec: str, label_column: str, inputs: int) -> Samples:
    """The samples to predict on; a CSV whose width is the model's input has no label column (unless named)."""
    path = Path(spec)
    if path.suffix == ".csv":
        column = parse_label_column(label_column)
        samples = read_csv(path, column)
        if column == -1 and samples.x.shape[1] + 1 == inputs:
            return read_csv(path, None)  # the last column is an input too: no labels, predictions only
        return samples
    if path.suffix == ".npz":
        return read_npz(path, "x" if npz_parts(path) == ["x"] else "test")
    split = load_source(spec)
    ds = split.test if len(split.test) else split.train
    names = np.array(ds.classes, dtype=str)[ds.y]
    return Samples(ds.x, names, spec, f"({'test' if len(split.test) else 'training'} part)")


def confusion_table(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> str:
    """Rows: true class (a label the model does not know gets its own row), columns: predicted class."""
    rows = list(classes) + sorted(set(labels.tolist()) - set(classes))
    index = {name: i for i, name in enumerate(rows)}
    matrix = np.zeros((len(rows), len(classes)), np.int64)
    np.add.at(matrix, (np.array([index[v] for v in labels]), predicted), 1)
    width = max(6, *(len(c) + 1 for c in rows), len(str(int(matrix.max(initial=0)))) + 1)
    lines = [" " * width + "".join(f"{c:>{width}}" for c in classes)]
    for name, row in zip(rows, matrix, strict=True):
        if row.sum() or name in classes:
            lines.append(f"{name:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def per_row_csv(scored: Scored, classes: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sample", *(["label"] if scored.labels is not None else []), "predicted",
                     *(f"p_{c}" for c in classes)])  # fmt: skip
    for i, (p, probs) in enumerate(zip(scored.predicted, scored.probabilities, strict=True)):
        label = [scored.labels[i]] if scored.labels is not None else []
        writer.writerow([i, *label, classes[p], *(f"{v:.4f}" for v in probs)])
    return out.getvalue().encode()


def predict(args: argparse.Namespace) -> int:
    predictor = Predictor(args.model, args.backend)
    classes = predictor.classes
    inputs = int(np.prod(predictor.input_shape))
    samples = read_samples(args.data, args.label_column, inputs)
    probabilities = predictor.predict_proba(samples.x, samples.origin)
    scored = Scored(samples.labels, probabilities.argmax(axis=1), probabilities)
    print(
        f"model {args.model} (version {predictor.version[:16]}, {len(classes)} classes, backend "
        f"{predictor.backend.name}) on {samples.origin}: {len(samples.x)} samples"
    )
    if scored.labels is None:
        counts = np.bincount(scored.predicted, minlength=len(classes))
        print(f"no labels ({samples.label_field}): predictions only")
        print("predicted: " + ", ".join(f"{c} {n}" for c, n in zip(classes, counts, strict=True) if n))
    else:
        truth = scored.labels
        correct = int((np.array(classes, dtype=str)[scored.predicted] == truth).sum())
        unknown = sorted(set(truth.tolist()) - set(classes))
        print(f"accuracy {correct / len(truth):.4f} ({correct} of {len(truth)}); labels: {samples.origin} "
              f"{samples.label_field}")  # fmt: skip
        if unknown:
            rows = int(np.isin(truth, unknown).sum())
            print(f"labels {unknown[:5]} are not classes of the model: their {rows} samples count as wrong")
        print("confusion matrix (rows: true class, columns: predicted class):")
        print(confusion_table(truth, scored.predicted, classes))
    if args.out:
        atomic_write(args.out, per_row_csv(scored, classes))
        print(f"wrote {args.out}: one row per sample (label, predicted class, each class's probability)")
    return 0
