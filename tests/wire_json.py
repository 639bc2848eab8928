"""A JSON view of decoded messages: bytes as hex, arrays as lists, enums as numbers (for golden vectors)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import numpy as np


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"_type": type(value).__name__}
        out.update({f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return out
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, np.ndarray):
        return [float(v) if value.dtype.kind == "f" else int(v) for v in value.tolist()]
    if isinstance(value, Enum):
        return int(value.value) if isinstance(value.value, int) else value.value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return float(np.float32(value))  # every float on the wire is a float32 (or float16 inside arrays)
    return value
