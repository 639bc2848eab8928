"""The CDDL in docs/protocol.md is checked, not only written.

A strict parser (pycddl, on the Rust ``cddl`` crate) reads the block as the
docs hold it; every golden vector validates against its message's rule;
damaged vectors are refused by the CDDL exactly when the decoder refuses
them; and each message's ``Key`` enum holds exactly the key numbers of its
rule. The docs are the one copy of the CDDL: nothing here repeats it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pycddl
import pytest

from edge_runtime import wire
from edge_runtime.wire import Capabilities, Presence, Task, TensorUpdate, Train, Update
from edge_runtime.wire.schema import Header

DOCS = Path(__file__).parents[1] / "docs"
VECTORS = json.loads((Path(__file__).parent / "vectors" / "wire.json").read_text())
# Every page that may hold CDDL; the serial page refers to protocol.md's today.
CDDL = "\n".join(
    block
    for page in ("protocol.md", "serial-protocol.md")
    for block in re.findall(r"^```cddl\n(.*?)^```", (DOCS / page).read_text(), re.S | re.M)
)
# Maps inside a message that have a key enum of their own: (message, key) -> class of the inner map.
NESTED: dict[tuple[type, int], type] = {
    (Update, Update.Key.TENSORS): TensorUpdate,
    (Presence, Presence.Key.CAPABILITIES): Capabilities,
    (Train, Train.Key.TASK): Task,
    (wire.ModelManifest, wire.ModelManifest.Key.PATCH): wire.ModelPatch,
}
KEYED = [*wire.MESSAGE_CLASSES.values(), TensorUpdate, Capabilities]
# Encoded by the real code for keys no golden vector carries.
EXTRA = [
    Task(bytes(16), 1, bytes(32), 1, 0.05, 1.0, 1_700_000_000, evaluate_only=True),
    Presence("dev-02", True, 1, 1_700_000_000, Capabilities(1 << 20, "micro", 1, 48, bytes(32), "fw 1.2", 9000)),
]
ENCODINGS = [(v["name"], bytes.fromhex(v["hex"])) for v in VECTORS["valid"]] + [
    (f"extra-{type(m).__name__.lower()}", wire.encode(m)) for m in EXTRA
]


def rule_of(cls: type) -> str:
    """ModelManifest -> model-manifest: the CDDL rule of a message class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


@functools.cache
def schema(rule: str) -> pycddl.Schema:
    return pycddl.Schema(f"checked-rule = {rule}\n{CDDL}")  # pycddl validates against the first rule


def accepted(rule: str, data: bytes) -> bool:
    try:
        schema(rule).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True


def decodes(data: bytes) -> bool:
    try:
        wire.decode(data)
    except wire.WireError:
        return False
    return True


def maps(cls: type, obj: dict[int, Any]) -> Iterator[tuple[type, tuple[int, ...], dict[int, Any]]]:
    """The message's own map, then every inner map with a key enum: (its class, path, map)."""
    yield cls, (), obj
    for (outer, key), inner in NESTED.items():
        if outer is cls and key in obj:
            value = obj[key]
            for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
                yield inner, (key,) if i is None else (key, i), item


def edited(obj: Any, path: tuple[int, ...], key: int, value: Any = None, *, remove: bool = False) -> bytes:
    """The message with one key of the map at ``path`` removed or replaced, as canonical CBOR."""

    def edit(node: Any, rest: tuple[int, ...]) -> Any:
        if rest:
            copy = list(node) if isinstance(node, list) else dict(node)
            copy[rest[0]] = edit(node[rest[0]], rest[1:])
            return copy
        return {k: v for k, v in node.items() if k != key} | ({} if remove else {key: value})

    return cbor2.dumps(edit(obj, path), canonical=True)


def rule_keys(rule: str) -> tuple[set[int], set[int]]:
    """(all, optional) integer keys of a map rule, following the group rules it names (tensor-update's)."""
    text = re.sub(r";[^\n]*", "", CDDL)
    found = re.search(rf"^{re.escape(rule)}\s*=\s*([{{(])", text, re.M)
    assert found, f"no rule {rule} in the CDDL"
    keys: set[int] = set()
    optional: set[int] = set()
    depth = 0
    for token in re.finditer(r"[\[{(]|[\]})]|(\?\s*)?(\d+)\s*:|[A-Za-z][\w-]*", text[found.end(1) :]):
        tok = token.group()
        if tok in "[{(":
            depth += 1
        elif tok in "]})":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and token.group(2):
            keys.add(int(token.group(2)))
            if token.group(1):
                optional.add(int(token.group(2)))
        elif depth == 0 and re.search(rf"^{re.escape(tok)}\s*=\s*\(", text, re.M):  # a group rule: its keys are ours
            inner, inner_optional = rule_keys(tok)
            keys |= inner
            optional |= inner_optional
    return keys, optional


def test_the_cddl_is_there_and_a_strict_parser_accepts_it() -> None:
    assert "update = {" in CDDL and "hello = {" in CDDL
    pycddl.Schema(CDDL)  # raises ValueError naming the line it refuses


@pytest.mark.parametrize(("name", "data"), ENCODINGS, ids=[n for n, _ in ENCODINGS])
def test_every_golden_vector_matches_the_rule_of_its_message(name: str, data: bytes) -> None:
    rule = rule_of(type(wire.decode(data)))
    schema(rule).validate_cbor(data)  # raises with the CDDL's reason
    assert accepted("message", data)


def test_each_key_enum_holds_exactly_the_keys_of_its_rule() -> None:
    for cls in KEYED:
        own = {int(k) for k in cls.Key}
        expected = own | ({int(k) for k in Header} if hasattr(cls, "TYPE") else set())
        keys, _ = rule_keys(rule_of(cls))
        assert keys == expected, f"{cls.__name__}.Key and CDDL rule {rule_of(cls)} differ: {sorted(keys ^ expected)}"


def test_every_key_the_code_knows_is_validated_in_some_encoding() -> None:
    carried = set()
    for _, data in ENCODINGS:
        message = cbor2.loads(data)
        for cls, _, obj in maps(type(wire.decode(data)), message):
            carried |= {(cls, key) for key in obj}
    known = {(cls, int(k)) for cls in KEYED for k in cls.Key}
    missing = sorted(f"{cls.__name__}.Key.{cls.Key(k).name}" for cls, k in known - carried)
    assert not missing, f"no golden vector or EXTRA message carries {missing}: the CDDL never saw them"


@pytest.mark.parametrize(("name", "data"), ENCODINGS, ids=[n for n, _ in ENCODINGS])
def test_the_cddl_refuses_a_missing_or_mistyped_key_exactly_when_the_decoder_does(name: str, data: bytes) -> None:
    """Each key removed, and each key's value replaced by -1 (no field takes a negative integer)."""
    message = cbor2.loads(data)
    cls = type(wire.decode(data))
    rule = rule_of(cls)
    checked = 0
    for inner, path, obj in maps(cls, message):
        # The header keys of the message itself; an inner map's own keys (a relayed task's header is not read).
        ours = {int(k) for k in inner.Key} | ({int(k) for k in Header} if not path else set())
        for key in sorted(ours & obj.keys()):
            where = f"{inner.__name__} key {key} at {list(path)}"
            removed = edited(message, path, key, remove=True)
            assert accepted(rule, removed) == decodes(removed), f"{where} removed: CDDL and decoder disagree"
            mistyped = edited(message, path, key, -1)
            assert not accepted(rule, mistyped), f"{where} = -1 passes the CDDL"
            assert not decodes(mistyped), f"{where} = -1 passes the decoder"
            checked += 1
    assert checked >= len(message)


def as_map(message: Any) -> dict[int, Any]:
    return dict(cbor2.loads(wire.encode(message)))


def without(obj: dict[int, Any], key: int) -> dict[int, Any]:
    return {k: v for k, v in obj.items() if k != key}


TASK = as_map(EXTRA[0])
UPDATE = dict(cbor2.loads(dict(ENCODINGS)["update-varint-int8"]))  # int8 values, varint positions
TENSOR = UPDATE[Update.Key.TENSORS][0]
CHUNK = as_map(wire.ModelChunk(bytes(32), 0, b"x", hashlib.sha256(b"x").digest()))
DAMAGED: dict[str, tuple[str, dict[int, Any]]] = {
    "task round as text": ("task", TASK | {Task.Key.ROUND: "3"}),
    "task without a deadline": ("task", without(TASK, Task.Key.DEADLINE)),
    "task with 1001 epochs": ("task", TASK | {Task.Key.EPOCHS: 1001}),
    "task with a 15-byte id": ("task", TASK | {Task.Key.TASK_ID: bytes(15)}),
    "update without tensors": ("update", without(UPDATE, Update.Key.TENSORS)),
    "int8 values tagged float32": (
        "update",
        UPDATE | {Update.Key.TENSORS: [TENSOR | {TensorUpdate.Key.VALUES: cbor2.CBORTag(85, bytes(12))}]},
    ),
    "int8 values without a scale": (
        "update",
        UPDATE | {Update.Key.TENSORS: [without(TENSOR, TensorUpdate.Key.SCALE)]},
    ),
    "hello op code as text": ("hello", as_map(wire.Hello(1, 1, 1, "fw", ops=[9])) | {wire.Hello.Key.OPS: ["9"]}),
    "chunk digest of 31 bytes": ("model-chunk", CHUNK | {wire.ModelChunk.Key.DIGEST: bytes(31)}),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_messages_are_refused_by_the_cddl_and_the_decoder(case: str) -> None:
    rule, obj = DAMAGED[case]
    data = cbor2.dumps(obj, canonical=True)
    assert not accepted(rule, data), f"{case}: the CDDL accepts it"
    assert not accepted("message", data)
    assert not decodes(data), f"{case}: the decoder accepts it"
