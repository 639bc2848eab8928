"""A model file the user named, read and checked with errors that name the option and the file.

The reader's own errors (``model is 6 bytes; a .tflite file has at least
8``, ``tensor 'x': dtype is float32, int8 required``) say what is wrong
inside the bytes but not which file, and a command may read several. Here
each gets the option or key the user set (``what``) and the path in front.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import check_input_file
from .errors import CorruptModelError, ModelError, NotInt8Error
from .graph import Graph
from .reader import read_graph

INT8_HINT = (
    "tinyfed trains full-integer (int8) models: build one with `tinyfed model build`, or convert with "
    "TFLiteConverter using full-integer quantisation (inference_input_type = inference_output_type = tf.int8)"
)


def read_model(path: Path, what: str, int8: bool = True) -> tuple[bytes, Graph]:
    """The bytes and graph of the .tflite file at ``path``; with ``int8``, refuse a float model."""
    check_input_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        graph = read_graph(data)
    except CorruptModelError as exc:
        raise CorruptModelError(f"{what} {path}: not a .tflite model ({exc})") from exc
    except ModelError as exc:
        raise ModelError(f"{what} {path}: {exc}") from exc
    if int8:
        try:
            graph.check_int8()
        except NotInt8Error as exc:
            raise ModelError(f"{what} {path}: not an int8 model: {exc}. {INT8_HINT}") from exc
    return data, graph
