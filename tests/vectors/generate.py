"""Write tests/vectors/wire.json (golden CBOR vectors for every message and coding, valid and refused) and
tests/vectors/compact.json (the compact update's, with the spec, device and versions to decode them with).

Run from the repository root: ``python -m tests.vectors.generate``. The test
suite checks the committed file against the codec, so a change to the wire
format shows up as a diff here that a C implementation must follow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.wire import CodedValues, TensorUpdate, ValueCoding
from tests.wire_json import to_json

V1 = hashlib.sha256(b"model v1").digest()
V0 = hashlib.sha256(b"model v0").digest()
ID = bytes(range(16))
PATCH = wire.make_patch(b"TFL3 v0 bytes", b"TFL3 v1 bytez")
assert PATCH is not None


def tensor(numel: int, indices: list[int], coding: ValueCoding, codes: list[float], scale: float = 1.0) -> TensorUpdate:
    dtype = {ValueCoding.FLOAT32: np.float32, ValueCoding.FLOAT16: np.float16}.get(coding, np.int8)
    return TensorUpdate(7, numel, np.array(indices, np.int64), CodedValues(coding, np.array(codes, dtype), scale))


def update(*tensors: TensorUpdate, **extra: Any) -> wire.Update:
    return wire.Update(ID, "dev-01", 3, V1, 120, list(tensors), **extra)


VALID: list[tuple[str, str, Any]] = [
    (
        "update-varint-int8",
        "3 positions of 1000 coded as delta varints, int8 values with a per-tensor scale",
        update(tensor(1000, [5, 6, 900], ValueCoding.INT8, [127, -3, 64], 0.5)),
    ),
    (
        "update-rice-int8",
        "40 positions of 20000, Golomb-Rice (quotients first, then k-bit remainders)",
        update(tensor(20000, list(range(0, 20000, 500)), ValueCoding.INT8, list(range(-20, 20)), 0.25)),
    ),
    (
        "update-bitmap-float16",
        "half of 16 elements: a 2-byte bitmap, least significant bit = element 0",
        update(tensor(16, [0, 2, 4, 6, 8, 10, 12, 14], ValueCoding.FLOAT16, [1, -1, 0.5, -0.5, 2, -2, 0.25, 4])),
    ),
    (
        "update-dense-float32",
        "every element sent: no positions, values in order",
        update(tensor(4, [0, 1, 2, 3], ValueCoding.FLOAT32, [0.5, -1.5, 0.0, 3.0])),
    ),
    (
        "update-ternary",
        "signs packed two bits each (01 = +1, 10 = -1), first value in the low bits",
        update(tensor(100, [1, 2, 3, 50, 99], ValueCoding.TERNARY, [1, -1, 1, -1, 1], 0.125)),
    ),
    (
        "update-with-metrics",
        "metrics and activation ranges travel with the update",
        update(
            tensor(10, [3], ValueCoding.INT8, [10], 0.5),
            metrics={"loss": 0.5, "accuracy": 0.875},
            activation_ranges={"fully_connected_1": (0.0, 6.0)},
            created=1_700_000_000,
        ),
    ),
    (
        "update-ranges-by-tensor",
        "activation ranges keyed by the output tensor's index (what devices send)",
        update(tensor(10, [3], ValueCoding.INT8, [10], 0.5), activation_ranges={12: (0.0, 6.0), 15: (-2.5, 3.0)}),
    ),
    (
        "task-quiet",
        "a task that asks for no evaluation report and no activation ranges this round",
        wire.Task(ID, 4, V1, epochs=1, learning_rate=0.05, density=0.01, deadline=1_700_000_900, report=False),
    ),
    (
        "task-central-dp",
        "central DP: the update sent is clipped to L2 norm 0.25 and reports whether it was within it",
        wire.Task(ID, 5, V1, epochs=1, learning_rate=0.05, density=0.01, deadline=1_700_001_200, report=False,
                  clip=0.25, clip_bit=True),
    ),
    (
        "task-local-dp",
        "local DP: clipped to 0.5, then Gaussian noise of stddev 1.5 x 0.5 added on the device",
        wire.Task(ID, 6, V1, epochs=1, learning_rate=0.05, density=0.01, deadline=1_700_001_800, report=False,
                  clip=0.5, noise=1.5),
    ),
    (
        "update-below-clip",
        "adaptive clipping: the device's delta was within the task's clip",
        update(tensor(10, [3], ValueCoding.INT8, [10], 0.5), below_clip=True),
    ),
    (
        "task",
        "a training task for round 3",
        wire.Task(
            ID, 3, V1, epochs=2, learning_rate=0.05, density=0.01, deadline=1_700_000_600, batch_size=32, prox_mu=0.01
        ),
    ),
    (
        "manifest",
        "model v1: 40,816 bytes in 1 chunk, two trainable tensors, the chunk's sha256",
        wire.ModelManifest(
            V1,
            40816,
            65536,
            1,
            [wire.TrainableTensor(7, (6, 64)), wire.TrainableTensor(8, (6,))],
            created=1_700_000_000,
            parent=V0,
            federation="har",
            chunk_digests=[hashlib.sha256(b"TFL3-bytes").digest()],
        ),
    ),
    (
        "model-patch",
        "a 13-byte model's version v1 as a patch against v0: two bytes changed",
        PATCH,
    ),
    (
        "manifest-patched",
        "version v1 of a 13-byte model, with the patch from its parent v0 inside (base and target implied)",
        wire.ModelManifest(
            PATCH.target,
            13,
            65536,
            1,
            [wire.TrainableTensor(7, (6, 64))],
            created=1_700_000_000,
            parent=PATCH.base,
            federation="har",
            chunk_digests=[PATCH.target],
            patch=PATCH,
        ),
    ),
    (
        "chunk",
        "chunk 0 of a model, with its own sha256",
        wire.ModelChunk(V1, 0, b"TFL3-bytes", hashlib.sha256(b"TFL3-bytes").digest()),
    ),
    (
        "presence-birth",
        "a device's birth certificate (retained)",
        wire.Presence(
            "dev-01",
            True,
            1,
            1_700_000_000,
            wire.Capabilities(
                ram=512 << 20, backend="litert", trainable_layers=2, samples=350, model_version=V1,
                data=bytes(range(16)), group="site-a",
            ),
        ),
    ),
    ("presence-death", "the last will: the device is gone", wire.Presence("dev-01", False, 2, 1_700_000_100)),
    (
        "gateway-state",
        "round 3 training, 10 selected, 4 received",
        wire.GatewayState("har", 3, 1, V1, 10, 4, 1_700_000_600, 1_700_000_300),
    ),
    (
        "receipt",
        "one update received, one refused with its reason",
        wire.Receipt([ID], {bytes(range(16, 32)): "base version is not the round's"}),
    ),
    (
        "task-failure",
        "a device cannot do task 3: its labels are not the model's classes",
        wire.TaskFailure(
            ID, "dev-01", 3, bytes(range(16, 32)), wire.FailureReason.LABELS, "labels [0, 1, 7], model has 6 classes"
        ),
    ),
    (
        "fragment",
        "fragment 1 of 3 of a 10-byte message, with the whole message's sha256",
        wire.Fragment(ID, 1, 3, 10, hashlib.sha256(b"0123456789").digest(), b"4567"),
    ),
    (
        "serial-hello",
        "a board's capabilities",
        wire.Hello(
            ram=256 * 1024,
            flash=1 << 20,
            arena=12400,
            firmware="tinyfed-emu 0.1",
            max_frame=1024,
            model_version=V0,
            ops=[9, 3, 25],
            board_id="emu-0001",
            samples=48,
        ),
    ),
    (
        "serial-hello-patch",
        "a board that applies model patches (PATCH_BEGIN)",
        wire.Hello(ram=256 * 1024, flash=1 << 20, arena=3994, firmware="tinyfed-emu 0.1", max_frame=4096,
                   model_version=V0, ops=[9], board_id="emu-0002", samples=31, patch=True),
    ),
    ("serial-model-begin", "start (or resume at byte 4096) a model transfer", wire.ModelBegin(V1, 40816, 4096)),
    (
        "serial-patch-begin",
        "start (or resume at byte 72) a 151-byte patch from V0 to V1 of a 13,504-byte model",
        wire.PatchBegin(V1, V0, 151, 13504, 72),
    ),
    (
        "serial-error-no-parent",
        "refused a patch against a model the board does not run",
        wire.Error(wire.ErrorCode.NO_PARENT, 27, "patch_begin.base: the patch is against 5d5b09f6dcb2"),
    ),
    ("serial-model-data", "model bytes at an offset", wire.ModelData(4096, b"\x01\x02\x03")),
    ("serial-model-commit", "switch to the model once its sha256 matches", wire.ModelCommit(V1)),
    ("serial-train", "a task relayed to a board", wire.Train(wire.Task(ID, 3, V1, 1, 0.01, 0.05, 1_700_000_600))),
    ("serial-infer", "an int8 input", wire.Infer(np.array([-128, 0, 127], np.int8))),
    (
        "serial-infer-result",
        "an int8 output and the time it took",
        wire.InferResult(np.array([-128, 127], np.int8), 26),
    ),
    ("serial-status", "idle with a model", wire.Status(0, V1, 120_000, 0, 3600)),
    ("serial-reset", "reset after a brown-out", wire.Reset(2)),
    ("serial-log", "a log line", wire.Log(6, "model committed")),
    (
        "serial-error",
        "refused a model that does not fit flash",
        wire.Error(wire.ErrorCode.NO_FLASH, 17, "model 2 MB, flash 1 MB"),
    ),
    (
        "task-secure",
        "a task of a secure aggregation round: its input goes through the SecAgg+ session, nothing in the clear",
        wire.Task(ID, 9, V1, epochs=1, learning_rate=0.05, density=0.1, deadline=1_700_002_000, report=False,
                  clip=1.0, secure=True),
    ),
    (
        "secagg-setup",
        "secure aggregation: device 2 of 5 in a session, degree 4, threshold 3, a 21-bit field, 5 coordinates",
        wire.SecAggSetup(ID, 9, 2, 5, 4, 3, V0, 21, 0.0005, 1.0, 2.5,
                         [(7, np.array([3, 9, 40])), (8, np.array([0, 5]))], 1_700_002_000),
    ),
    (
        "secagg-setup-levels",
        "the same session with a bound per value: |value / step| clamped to 7 levels ([secagg] value_bound)",
        wire.SecAggSetup(ID, 9, 2, 5, 4, 3, V0, 21, 0.0005, 1.0, 2.5,
                         [(7, np.array([3, 9, 40])), (8, np.array([0, 5]))], 1_700_002_000, levels=7),
    ),
    (
        "secagg-advertise",
        "a device's two X25519 public keys for the session",
        wire.SecAggAdvertise(ID, 2, bytes(range(32)), bytes(range(32, 64))),
    ),
    (
        "secagg-keys",
        "the keys of the neighbours that advertised",
        wire.SecAggKeys(ID, [(1, bytes(range(32)), bytes(range(32, 64))), (4, bytes(32), bytes([1]) * 32)]),
    ),
    (
        "secagg-shares",
        "sealed shares for two neighbours",
        wire.SecAggShares(ID, 2, [(1, bytes(range(60))), (4, bytes(range(100, 160)))]),
    ),
    ("secagg-collect", "the sealed shares addressed to device 2", wire.SecAggCollect(ID, [(1, bytes(range(60)))])),
    ("secagg-masked", "five 21-bit field elements, packed", wire.SecAggMasked(ID, 2, bytes(range(14)))),
    ("secagg-unmask", "devices 1 and 2 sent their input, 4 did not", wire.SecAggUnmask(ID, [1, 2], [4])),
    (
        "secagg-reveal",
        "self-mask shares of the survivors, the mask-key share of the dropped",
        wire.SecAggReveal(ID, 2, [(1, bytes(32)), (2, bytes([1]) * 32)], [(4, bytes([2]) * 32)]),
    ),
]


def refused() -> list[tuple[str, str, str, str, str]]:
    """(name, meaning, hex, error class, field prefix)."""
    base = wire.encode(VALID[0][2])
    manifest = next(msg for name, _, msg in VALID if name == "manifest")
    digest = b"\x58\x20" + manifest.chunk_digests[0]
    two_digests = wire.encode(manifest)[: -1 - len(digest)] + b"\x82" + digest * 2  # key 10, last: [d] -> [d, d]
    patched = next(msg for name, _, msg in VALID if name == "manifest-patched")
    count_tail = wire.encode(patched)[-40:]  # the embedded patch's keys come last; key 5 (count) is 2
    assert count_tail.count(b"\x05\x02") == 1
    nan_update = update(tensor(4, [0, 1, 2, 3], ValueCoding.FLOAT32, [0.0, float("nan"), 1.0, 2.0]))
    cases = [
        ("truncated", "the last byte of a valid update is missing", base[:-1], "MalformedCBOR", "envelope"),
        ("trailing-byte", "a valid update followed by one more byte", base + b"\x00", "MalformedCBOR", "envelope"),
        (
            "huge-array",
            "an array header declaring 2^64-1 items in 9 bytes",
            bytes.fromhex("9bffffffffffffffff"),
            "MalformedCBOR",
            "envelope",
        ),
        (
            "indefinite-map",
            "an indefinite-length map (never written by tinyfed)",
            bytes.fromhex("bfff"),
            "MalformedCBOR",
            "envelope",
        ),
        ("foreign-tag", "tag 28 (value sharing) is not accepted", bytes.fromhex("d81c01"), "MalformedCBOR", "envelope"),
        (
            "nan-value",
            "a float32 value that is NaN",
            wire.encode(nan_update),
            "ValueRejected",
            "update.tensors[0].values",
        ),
        ("unknown-type", "message type 99", bytes.fromhex("a2001863" + "0101"), "SchemaError", "message.type"),
        (
            "future-version",
            "schema version 2 of a task",
            bytes.fromhex("a2000201" + "02"),
            "SchemaError",
            "task.schema_version",
        ),
        (
            "manifest-digest-count",
            "a manifest of 1 chunk listing 2 chunk digests",
            two_digests,
            "ValueRejected",
            "modelmanifest.chunk_digests",
        ),
        (
            "manifest-patch-count",
            "a manifest whose patch changes 14 bytes of a 13-byte model",
            wire.encode(patched)[:-len(count_tail)] + count_tail.replace(b"\x05\x02", b"\x05\x0e"),
            "ValueRejected",
            "modelmanifest.patch.count",
        ),
    ]
    return [(n, m, b.hex(), e, f) for n, m, b, e, f in cases]


def build() -> dict[str, Any]:
    return {
        "format": "tinyfed wire vectors v1: each 'hex' is one whole message; 'decoded' is its meaning",
        "valid": [
            {"name": n, "meaning": m, "hex": wire.encode(msg).hex(), "decoded": to_json(msg)} for n, m, msg in VALID
        ],
        "refused": [{"name": n, "meaning": m, "hex": h, "error": e, "field": f} for n, m, h, e, f in refused()],
    }


# -- compact update (type 10): read against a spec, the topic's device and the known versions ---------------
COMPACT_SPEC = {3: 100, 7: 20000, 8: 16}
COMPACT_DEVICE = "dev-01"
COMPACT_VERSIONS = [V0, V1]
CID = bytes(range(1, 9)) + bytes(8)


def compact_update(*tensors: TensorUpdate, **extra: Any) -> wire.Update:
    return wire.Update(CID, COMPACT_DEVICE, 3, V1, 120, list(tensors), **extra)


def placed(t: TensorUpdate, index: int) -> TensorUpdate:
    return TensorUpdate(index, t.numel, t.indices, t.values)


COMPACT_VALID: list[tuple[str, str, wire.Update]] = [
    (
        "compact-rice-int8",
        "40 positions of tensor 7 (slot 1, 20000 elements): Rice gaps, then int8 codes as signs and Rice magnitudes"
        " above their base; the scale 0.25 is a bfloat16, sent in 16 bits",
        compact_update(tensor(20000, list(range(0, 20000, 500)), ValueCoding.INT8, list(range(-20, 20)), 0.25)),
    ),
    (
        "compact-bitmap-ternary",
        "half of tensor 8's 16 elements: a 16-bit bitmap is smaller than Rice; ternary codes two bits each",
        compact_update(placed(tensor(16, [0, 2, 4, 6, 8, 10, 12, 14], ValueCoding.TERNARY, [1, -1, 1, 1, -1, 0, 1, -1],
                                     0.125), 8)),
    ),
    (
        "compact-two-tensors-wide-scale",
        "slots 0 and 2 (tensors 3 and 8); tensor 3's scale 0.1 is not a bfloat16, so it takes 32 bits",
        compact_update(
            placed(tensor(100, [5, 6, 90], ValueCoding.INT8, [127, -3, 64], float(np.float32(0.1))), 3),
            placed(tensor(16, [15], ValueCoding.INT8, [-127], 2.0), 8),
            below_clip=True,
        ),
    ),
    (
        "compact-evaluation-extras",
        "no tensors: an evaluation report; metrics and created travel as the CBOR map after the bit stream",
        compact_update(metrics={"loss": 0.5, "accuracy": 0.75}, created=1_700_000_000, below_clip=False),
    ),
]


def compact_refused() -> list[tuple[str, str, str, str, str]]:
    """(name, meaning, hex, error class, field prefix) for the compact layout."""
    good = wire.encode_compact(COMPACT_VALID[0][2], COMPACT_SPEC)
    two = wire.encode_compact(COMPACT_VALID[2][2], COMPACT_SPEC)
    ternary = wire.encode_compact(COMPACT_VALID[1][2], COMPACT_SPEC)
    ternary = next(t for t in (_set_bit(ternary, i) for i in range(len(ternary) * 8 - 1, 0, -1)) if _says(t, "0b11"))
    big_slot = bytearray(good)
    big_slot[15] = 0b0000_0101  # flags 000, count gamma(2) = 010, then the slot gamma starts 00...
    cases = [
        ("compact-truncated", "the bit stream ends inside the value magnitudes", good[:-3].hex(), "ValueRejected",
         "update.tensors[0]"),
        ("compact-trailing-byte", "a byte after the bit stream without the extras flag", (good + b"\0").hex(),
         "ValueRejected", "update"),
        ("compact-ternary-0b11", "ternary code 0b11 is not a value", bytes(ternary).hex(), "ValueRejected",
         "update.tensors[0].values"),
        ("compact-slot-outside-spec", "a tensor slot past the model's three tensors", bytes(big_slot).hex(),
         "ValueRejected", "update.tensors[0].tensor"),
        ("compact-round-too-long", "a round of six LEB128 bytes", (good[:13] + b"\xff" * 6 + good[14:]).hex(),
         "LimitExceeded", "update.round"),
        ("compact-padding-not-zero", "a one in the padding after the bit stream",
         (two[:-1] + bytes([two[-1] | 1])).hex(), "ValueRejected", "update"),
    ]
    return [(n, m, h, e, f) for n, m, h, e, f in cases]


def _set_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] |= 0x80 >> (bit % 8)
    return bytes(out)


def _says(data: bytes, words: str) -> bool:
    try:
        wire.decode(data, spec=COMPACT_SPEC, device=COMPACT_DEVICE, versions=COMPACT_VERSIONS)
    except wire.WireError as exc:
        return words in exc.reason
    return False


def build_compact() -> dict[str, Any]:
    return {
        "about": "Compact updates (type 10, docs/protocol.md): decode with this spec, device and versions.",
        "spec": {str(k): v for k, v in COMPACT_SPEC.items()},
        "device": COMPACT_DEVICE,
        "versions": [v.hex() for v in COMPACT_VERSIONS],
        "valid": [
            {"name": n, "meaning": m, "hex": wire.encode_compact(msg, COMPACT_SPEC).hex(), "decoded": to_json(msg)}
            for n, m, msg in COMPACT_VALID
        ],
        "refused": [
            {"name": n, "meaning": m, "hex": h, "error": e, "field": f} for n, m, h, e, f in compact_refused()
        ],
    }


if __name__ == "__main__":
    path = Path(__file__).with_name("wire.json")
    path.write_text(json.dumps(build(), indent=1) + "\n")
    path.with_name("compact.json").write_text(json.dumps(build_compact(), indent=1) + "\n")
    print(f"wrote {path}")
