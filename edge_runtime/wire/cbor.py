"""CBOR in and out: cbor2 for the bytes, RFC 8746 typed arrays for numpy, a bounds scan first.

Encoding is canonical (RFC 8949 core deterministic: sorted keys, shortest
floats), so one message has one byte string: golden vectors stay stable and
a signature covers exactly what was meant. Decoding runs :func:`scan.scan`
before cbor2 sees a byte, and converts typed-array tags itself rather than
through cbor2's tag hook, whose signature changed between cbor2 5 and 6.
"""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np

from .errors import MalformedCBOR, SchemaError
from .limits import Limits
from .scan import scan

# RFC 8746 section 2.1: tag = 0b010_f_s_e_ll (f float, s signed, e little-endian, ll length code).
TAG_FOR_DTYPE: dict[str, int] = {
    "uint8": 64,
    "int8": 72,
    "uint16": 69,
    "uint32": 70,
    "int16": 77,
    "int32": 78,
    "float16": 84,
    "float32": 85,
    "float64": 86,
}
DTYPE_FOR_TAG: dict[int, np.dtype[Any]] = {tag: np.dtype(name).newbyteorder("<") for name, tag in TAG_FOR_DTYPE.items()}


def typed_array(values: np.ndarray) -> cbor2.CBORTag:
    """A 1-D numpy array as an RFC 8746 little-endian typed array."""
    name = values.dtype.name
    if name not in TAG_FOR_DTYPE:
        raise TypeError(f"no RFC 8746 tag for dtype {name}")
    little = np.ascontiguousarray(values.reshape(-1), dtype=values.dtype.newbyteorder("<"))
    return cbor2.CBORTag(TAG_FOR_DTYPE[name], little.tobytes())


def array_from(value: Any, field: str, allowed: tuple[str, ...], max_len: int) -> np.ndarray:
    """Decode a typed array, refusing other dtypes, odd byte lengths and oversize arrays (named)."""
    if not isinstance(value, cbor2.CBORTag) or value.tag not in DTYPE_FOR_TAG:
        raise SchemaError(field, f"expected a typed array ({', '.join(allowed)})")
    dtype = DTYPE_FOR_TAG[value.tag]
    if dtype.name not in allowed:
        raise SchemaError(field, f"typed array of {dtype.name}, expected {', '.join(allowed)}")
    payload = value.value
    if not isinstance(payload, bytes):
        raise SchemaError(field, "typed-array tag must wrap a byte string")
    if len(payload) % dtype.itemsize:
        raise MalformedCBOR(field, f"{len(payload)} bytes is not a whole number of {dtype.name}")
    if len(payload) // dtype.itemsize > max_len:
        raise SchemaError(field, f"{len(payload) // dtype.itemsize} elements exceed the bound {max_len}")
    return np.frombuffer(payload, dtype).astype(dtype.newbyteorder("="))


def dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def loads(data: bytes, limits: Limits, field: str = "message") -> Any:
    """Scan, then decode. Anything cbor2 still objects to becomes MalformedCBOR, never a crash."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(field, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    scan(data, limits, field)
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, OverflowError, RecursionError) as exc:
        raise MalformedCBOR(field, f"cbor2 refused it: {exc}") from exc
