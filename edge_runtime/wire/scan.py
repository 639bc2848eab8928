"""A well-formedness and bounds check of CBOR bytes that allocates nothing.

cbor2 pre-allocates from declared lengths (cbor2 issue #186), and nested
headers can each declare "all remaining bytes" to multiply that. Scanning
first, we require every declared item to actually be present, so what cbor2
later builds is bounded by the message's own size. The scan also refuses
what tinyfed never writes: indefinite lengths, tags outside the typed-array
set and COSE_Sign1, simple values other than false/true/null, and map keys
other than integers and text.
"""

from __future__ import annotations

from . import accel
from .errors import LimitExceeded, MalformedCBOR, MessageTooLarge
from .limits import Limits

COSE_SIGN1_TAG = 18
# RFC 8746 typed arrays tinyfed uses: uint8, sint8, uint16/32 LE, sint16/32 LE, float16/32/64 LE.
TYPED_ARRAY_TAGS = frozenset({64, 72, 69, 70, 77, 78, 84, 85, 86})
ALLOWED_TAGS = TYPED_ARRAY_TAGS | {COSE_SIGN1_TAG}


def _head(data: bytes, pos: int, field: str) -> tuple[int, int, int]:
    """Returns (major type, argument, position after the head)."""
    if pos >= len(data):
        raise MalformedCBOR(field, f"truncated at byte {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise MalformedCBOR(field, f"truncated argument at byte {pos}")
        return major, int.from_bytes(data[pos : pos + size], "big"), pos + size
    if info == 31:
        raise MalformedCBOR(field, f"indefinite-length item at byte {pos - 1} (tinyfed writes definite lengths)")
    raise MalformedCBOR(field, f"reserved additional information {info} at byte {pos - 1}")


def scan(data: bytes, limits: Limits, field: str = "message") -> None:
    """Raise a WireError unless ``data`` is exactly one bounded, well-formed CBOR item.

    It runs before every decode, once per item of every message (a gateway's hot path), so the loop keeps its
    state in locals: the open containers' remaining children on a stack, and a map's key/value turn from the
    parity of what remains (2m children: a key whenever an even number remain).

    With the C path built (accel.py), it answers first: what it takes this loop would take; anything else,
    including every fault, runs this loop, which names it."""
    size = len(data)
    if size > limits.max_message_bytes:
        raise MessageTooLarge(field, f"{size} bytes exceed the {limits.max_message_bytes}-byte maximum")
    max_items, max_depth = limits.max_items, limits.max_depth
    native = accel.native
    if native is not None and native.scan_ok(data, max_items, max_depth):
        return
    pos = 0
    items = 0
    stack: list[tuple[int, bool]] = []  # enclosing containers: (children they still expect, is a map)
    remaining, in_map = 1, False  # the innermost: a virtual root expects exactly one item
    while True:
        if not remaining:
            if not stack:
                break
            remaining, in_map = stack.pop()
            continue
        is_key = in_map and not remaining & 1
        remaining -= 1
        items += 1
        if items > max_items:
            raise LimitExceeded(field, f"more than {max_items} CBOR items")
        start = pos
        if pos >= size:
            raise MalformedCBOR(field, f"truncated at byte {pos}")
        initial = data[pos]
        major, arg = initial >> 5, initial & 0x1F
        pos += 1
        if arg >= 24:
            major, arg, pos = _head(data, start, field)
        if is_key and major not in (0, 1, 3):
            raise MalformedCBOR(field, f"map key at byte {start} is major type {major}; only integers and text")
        if major == 2 or major == 3:
            if arg > size - pos:
                raise MalformedCBOR(field, f"string at byte {start} declares {arg} bytes, {size - pos} remain")
            if major == 3:
                try:
                    data[pos : pos + arg].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedCBOR(field, f"text at byte {start} is not UTF-8") from exc
            pos += arg
        elif major == 4 or major == 5 or major == 6:
            children = 1 if major == 6 else arg * (2 if major == 5 else 1)
            if major == 6 and arg not in ALLOWED_TAGS:
                raise MalformedCBOR(field, f"tag {arg} at byte {start} is not one tinyfed uses")
            if children > size - pos:
                raise MalformedCBOR(
                    field, f"item at byte {start} declares {children} children, {size - pos} bytes remain"
                )
            if children:
                if len(stack) >= max_depth:
                    raise LimitExceeded(field, f"nesting deeper than {max_depth}")
                stack.append((remaining, in_map))
                remaining, in_map = children, major == 5
        elif major == 7 and (initial & 0x1F) not in (20, 21, 22, 25, 26, 27):
            raise MalformedCBOR(field, f"simple value {initial & 0x1F} at byte {start} is not one tinyfed uses")
    if pos != size:
        raise MalformedCBOR(field, f"{size - pos} trailing bytes after the message")
