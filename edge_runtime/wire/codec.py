"""The one entry point for turning messages into bytes and untrusted bytes into messages."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from . import compact
from .cbor import dumps, loads
from .envelope import Verifier, open_envelope
from .errors import SchemaError, ValueRejected
from .limits import DEFAULT_LIMITS, Limits
from .messages import Fragment, GatewayState, ModelChunk, ModelManifest, Presence, Receipt, Task, TaskFailure
from .patch import ModelPatch
from .schema import SCHEMA_VERSION, Header, MapReader
from .secagg import SECAGG_MESSAGES
from .serial import (
    Error,
    Hello,
    Infer,
    InferResult,
    Log,
    ModelBegin,
    ModelCommit,
    ModelData,
    PatchBegin,
    Reset,
    Status,
    Train,
)
from .update import Update

MESSAGE_CLASSES: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        Update,
        Task,
        ModelManifest,
        ModelChunk,
        ModelPatch,
        Presence,
        GatewayState,
        Receipt,
        Fragment,
        TaskFailure,
        Hello,
        ModelBegin,
        ModelData,
        ModelCommit,
        PatchBegin,
        Train,
        Infer,
        InferResult,
        Status,
        Reset,
        Log,
        Error,
        *SECAGG_MESSAGES,
    )
}
M = TypeVar("M")


def encode(message: Any) -> bytes:
    """Canonical CBOR bytes of any tinyfed message."""
    return dumps(message.to_cbor())


def decode(
    data: bytes,
    limits: Limits = DEFAULT_LIMITS,
    *,
    expect: type[M] | None = None,
    spec: Mapping[int, int] | None = None,
    verifier: Verifier | None = None,
    require_signature: bool = False,
    device: str = "",
    versions: Collection[bytes] | Callable[[bytes], bytes | None] = (),
) -> Any:
    """Decode untrusted bytes into a message, or raise a WireError naming the field.

    ``expect`` refuses any other message type; ``spec`` (tensor index ->
    element count, from the manifest) checks an update's tensors against the
    model; a signed message is verified when a ``verifier`` is given.

    A compact update (type 10, ``compact``) leaves out what the receiver
    knows: ``device`` (the topic's) becomes its device, ``versions`` (the
    model versions the receiver knows, or a function from a 4-byte prefix to
    the one version it names) resolve its base version's prefix, and
    ``spec`` gives its tensors' sizes. It decodes to an ``Update``.
    """
    if isinstance(data, bytes | bytearray | memoryview) and bytes(data[:1]) == compact.TYPE_BYTE:
        if require_signature:
            raise ValueRejected("envelope", "message is not signed and this receiver requires signatures")
        return _compact(bytes(data), limits, expect, spec, device, versions)
    opened = open_envelope(data, limits, verifier, require_signature)
    if opened.key_id is not None and opened.payload[:1] == compact.TYPE_BYTE:
        return _compact(opened.payload, limits, expect, spec, device, versions)
    obj = loads(opened.payload, limits) if opened.key_id is not None else opened.decoded
    r = MapReader(obj, "message")
    kind = r.uint(Header.TYPE, 255)
    version = r.uint(Header.SCHEMA_VERSION, 255)
    cls = MESSAGE_CLASSES.get(kind)
    if cls is None:
        raise SchemaError("message.type", f"unknown message type {kind}")
    r.path = cls.__name__.lower()
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{r.path}.schema_version", f"version {version}; this build reads {SCHEMA_VERSION}")
    if expect is not None and cls is not expect:
        raise SchemaError("message.type", f"{cls.__name__} where {expect.__name__} was expected")
    if cls is Update:
        return Update.from_reader(r, limits, spec)
    return cls.from_reader(r, limits)


def _compact(
    data: bytes,
    limits: Limits,
    expect: Any,
    spec: Mapping[int, int] | None,
    device: str,
    versions: Collection[bytes] | Callable[[bytes], bytes | None],
) -> Update:
    if expect is not None and expect is not Update:
        raise SchemaError("message.type", f"Update where {expect.__name__} was expected")
    return compact.decode(data, limits, spec, device, versions)


def encode_compact(update: Update, spec: Mapping[int, int]) -> bytes:
    """The compact layout of an update (docs/protocol.md, "Compact update"); ``spec`` as for ``decode``."""
    return compact.encode(update, spec)


def peek_type(data: bytes) -> int | None:
    """The message type of canonical, unsigned CBOR without decoding it; None if it cannot tell.

    A cheap routing hint (is this a fragment or a whole message?); ``decode``
    still checks everything. Canonical maps sort their keys, so key 0 (the
    type) comes first: a map header, 0x00, then the type as a small uint.
    """
    if data[:1] == compact.TYPE_BYTE:
        return compact.MSG_UPDATE_COMPACT
    if len(data) >= 3 and 0xA2 <= data[0] <= 0xB7 and data[1] == Header.TYPE:
        if data[2] < 0x18:
            return data[2]
        if data[2] == 0x18 and len(data) >= 4:  # a type of 24..255 (secure aggregation's) takes one more byte
            return data[3]
    return None
