"""Whether the intake's C path (``_cwire.c``) is here, and the switch that turns it off.

The C path is a faster way to the same answers: it takes only what the Python decoders take, and hands
everything else back to them, so refusals are always theirs and name their field. It is optional: devices and
Pis run without it (setup.py builds a pure-Python wheel for them), and so does a gateway built without a
compiler. ``TINYFED_PURE_PYTHON=1`` in the environment turns it off for a process (``built`` still says
whether it is there); ``python_only()`` for a block (tests and ``tinyfed bench aggregate`` measure both paths in
one run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .limits import Limits

_C_BOUND = 2**62  # what the C path counts in; limits beyond it (or not integers) leave decoding to Python


def _load() -> ModuleType | None:
    try:
        from . import _cwire  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _cwire


built: ModuleType | None = _load()  # the extension, when it was built (whether or not it is used)
# What the decoders use: ``built``, or None under TINYFED_PURE_PYTHON=1 or while python_only() runs.
native: ModuleType | None = None if os.environ.get("TINYFED_PURE_PYTHON") == "1" else built


def takes(limits: Limits) -> bool:
    """Whether the C path can decode under these limits: each a plain integer in 0..2**62 (a configured
    "unbounded" 2**64 must not turn into an OverflowError on the intake's path)."""
    values = (limits.max_nnz, limits.max_tensors, limits.max_numel)  # the scan takes its own two as it can
    return all(type(v) is int and 0 <= v <= _C_BOUND for v in values)


@contextmanager
def python_only() -> Iterator[None]:
    """Decode with the Python code alone inside the block (not thread-safe: tests and benchmarks only)."""
    global native
    saved, native = native, None
    try:
        yield
    finally:
        native = saved
