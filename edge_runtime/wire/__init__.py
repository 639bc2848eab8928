"""THE wire formats of tinyfed: every message, its CBOR form, its limits. Import them from here.

``encode(message) -> bytes`` and ``decode(bytes, limits, expect=..., spec=...)``
are the whole API; the schema is written once, in CDDL, in docs/protocol.md.
"""

from .codec import MESSAGE_CLASSES, decode, encode, encode_compact, peek_type
from .compact import MSG_UPDATE_COMPACT, CompactEncodingError, new_update_id
from .envelope import Ed25519Signer, Ed25519Verifier, Opened, Signer, Verifier, key_id_for, open_envelope, sign
from .errors import LimitExceeded, MalformedCBOR, MessageTooLarge, SchemaError, ValueRejected, WireError
from .index_coding import IndexCoding
from .limits import DEFAULT_LIMITS, Limits
from .messages import (
    Capabilities,
    FailureReason,
    Fragment,
    GatewayState,
    ModelChunk,
    ModelManifest,
    Presence,
    Receipt,
    Task,
    TaskFailure,
    TrainableTensor,
)
from .patch import ModelPatch, apply_patch, make_patch
from .secagg import (
    SecAggAdvertise,
    SecAggCollect,
    SecAggKeys,
    SecAggMasked,
    SecAggReveal,
    SecAggSetup,
    SecAggShares,
    SecAggUnmask,
)
from .serial import (
    Error,
    ErrorCode,
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
from .update import TensorUpdate, Update
from .values import CodedValues, ValueCoding

__all__ = [
    "DEFAULT_LIMITS",
    "MESSAGE_CLASSES",
    "MSG_UPDATE_COMPACT",
    "Capabilities",
    "CodedValues",
    "CompactEncodingError",
    "Ed25519Signer",
    "Ed25519Verifier",
    "Error",
    "ErrorCode",
    "FailureReason",
    "Fragment",
    "GatewayState",
    "Hello",
    "IndexCoding",
    "Infer",
    "InferResult",
    "LimitExceeded",
    "Limits",
    "Log",
    "MalformedCBOR",
    "MessageTooLarge",
    "ModelBegin",
    "ModelChunk",
    "ModelCommit",
    "ModelData",
    "ModelManifest",
    "ModelPatch",
    "Opened",
    "PatchBegin",
    "Presence",
    "Receipt",
    "Reset",
    "SchemaError",
    "SecAggAdvertise",
    "SecAggCollect",
    "SecAggKeys",
    "SecAggMasked",
    "SecAggReveal",
    "SecAggSetup",
    "SecAggShares",
    "SecAggUnmask",
    "Signer",
    "Status",
    "Task",
    "TaskFailure",
    "TensorUpdate",
    "Train",
    "TrainableTensor",
    "Update",
    "ValueCoding",
    "ValueRejected",
    "Verifier",
    "WireError",
    "apply_patch",
    "decode",
    "encode",
    "encode_compact",
    "key_id_for",
    "make_patch",
    "new_update_id",
    "open_envelope",
    "peek_type",
    "sign",
]
