"""Message keys, and reading CBOR maps into typed values one checked field at a time.

Every message's integer map keys are one IntEnum, named as the fields are:
its encoder writes ``{Key.ROUND: ...}``, its decoder reads ``r.uint(Key.ROUND,
...)``, and a refusal names the field from the key (``update.tensors[1].nnz``),
so a key number is written once. Each accessor bounds what it accepts and
never trusts a length it has not compared with a limit.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import Any

import numpy as np

from .cbor import array_from
from .errors import LimitExceeded, SchemaError, ValueRejected

MISSING: Any = object()
UINT64_MAX = 2**64 - 1
SCHEMA_VERSION = 1


class Header(IntEnum):
    """The keys every message map starts with."""

    TYPE = 0
    SCHEMA_VERSION = 1


def header(kind: int) -> dict[int, Any]:
    return {Header.TYPE: kind, Header.SCHEMA_VERSION: SCHEMA_VERSION}


def field_name(key: int | str) -> str:
    """A key's field name in error paths: an enum member's name, lower-cased; text keys name themselves."""
    return key.name.lower() if isinstance(key, IntEnum) else str(key)


class MapReader:
    """Typed reads from one CBOR map. Keys are a message's key enum, or text for ad-hoc checks of array items."""

    def __init__(self, obj: Any, path: str) -> None:
        if not isinstance(obj, dict):
            raise SchemaError(path, f"expected a map, got {type(obj).__name__}")
        self.obj = obj
        self.path = path

    def _field(self, key: int | str) -> str:
        return f"{self.path}.{field_name(key)}"

    def _get(self, key: int | str, default: Any) -> Any:
        if key in self.obj:
            return self.obj[key]
        if default is MISSING:
            raise SchemaError(self._field(key), f"required key {key} missing")
        return default

    def has(self, key: int) -> bool:
        return key in self.obj

    def uint(self, key: int | str, maximum: int = UINT64_MAX, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(self._field(key), f"expected an unsigned integer, got {value!r:.40}")
        if value > maximum:
            raise LimitExceeded(self._field(key), f"{value} exceeds the bound {maximum}")
        return value

    def number(self, key: int | str, default: Any = MISSING, lo: float = -math.inf, hi: float = math.inf) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(self._field(key), f"expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueRejected(self._field(key), f"{value} is not finite")
        if not lo <= value <= hi:
            raise ValueRejected(self._field(key), f"{value} outside [{lo}, {hi}]")
        return float(value)

    def boolean(self, key: int | str, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, bool) and not (value is default and default is not MISSING):
            raise SchemaError(self._field(key), "expected true or false")
        return value

    def text(self, key: int | str, max_len: int, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str):
            raise SchemaError(self._field(key), f"expected text, got {type(value).__name__}")
        if len(value.encode()) > max_len:
            raise LimitExceeded(self._field(key), f"{len(value.encode())} bytes exceed {max_len}")
        return value

    def bytestring(
        self, key: int | str, size: int | None = None, max_len: int = 1 << 20, default: Any = MISSING
    ) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, bytes):
            raise SchemaError(self._field(key), f"expected a byte string, got {type(value).__name__}")
        if size is not None and len(value) != size:
            raise SchemaError(self._field(key), f"{len(value)} bytes, exactly {size} required")
        if len(value) > max_len:
            raise LimitExceeded(self._field(key), f"{len(value)} bytes exceed {max_len}")
        return value

    def array(self, key: int | str, max_items: int, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, list):
            raise SchemaError(self._field(key), f"expected an array, got {type(value).__name__}")
        if len(value) > max_items:
            raise LimitExceeded(self._field(key), f"{len(value)} items exceed {max_items}")
        return value

    def submap(self, key: int | str, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        return MapReader(value, self._field(key))

    def typed(self, key: int | str, dtypes: tuple[str, ...], max_len: int, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        return array_from(value, self._field(key), dtypes, max_len)

    def float_map(self, key: int | str, max_items: int, max_key: int) -> dict[str, float]:
        """text -> finite number (metrics)."""
        if key not in self.obj:
            return {}
        value = self.obj[key]
        field = self._field(key)
        if not isinstance(value, dict):
            raise SchemaError(field, "expected a map of text to numbers")
        if len(value) > max_items:
            raise LimitExceeded(field, f"{len(value)} entries exceed {max_items}")
        out: dict[str, float] = {}
        for k, v in value.items():
            if not isinstance(k, str) or len(k.encode()) > max_key:
                raise SchemaError(field, f"key {k!r:.40} is not short text")
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueRejected(f"{field}[{k!r}]", f"{v!r:.40} is not a finite number")
            out[k] = float(v)
        return out


def f32(value: float) -> float:
    """Round to float32 so canonical CBOR writes it in 5 bytes, not 9."""
    return float(np.float32(value))
