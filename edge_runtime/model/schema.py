"""Names and codes from the TFLite flatbuffer schema that tinyfed reads and writes.

The generated accessors come from the ``tflite`` package (schema only, no
runtime); this module keeps the small tables that translate its integer enums
into the names used throughout tinyfed, plus the option fields per operator.
"""

from __future__ import annotations

from typing import Any

import tflite

OPCODE_NAMES: dict[int, str] = {
    v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
}
OPCODE_CODES: dict[str, int] = {v: k for k, v in OPCODE_NAMES.items()}

ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
ACTIVATION_CODES = {v: k for k, v in ACTIVATIONS.items()}
PADDINGS = {0: "SAME", 1: "VALID"}
PADDING_CODES = {v: k for k, v in PADDINGS.items()}

# Operator versions written for int8 kernels. tflite-runtime checks a
# registration exists for (op, version); these are the versions TensorFlow's
# converter emits for int8 tensors. TFLite Micro ignores versions.
INT8_OP_VERSIONS = {
    "FULLY_CONNECTED": 4,
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "AVERAGE_POOL_2D": 2,
    "MAX_POOL_2D": 2,
    "SOFTMAX": 2,
    "RESHAPE": 1,
    "MEAN": 2,
    "QUANTIZE": 2,
    "DEQUANTIZE": 2,
    "EXPAND_DIMS": 1,
    "ADD": 2,
    "RELU": 2,
    "RELU6": 2,
}


def _union(reader_cls: Any, table: Any) -> Any:
    options = reader_cls()
    options.Init(table.Bytes, table.Pos)
    return options


def parse_options(opcode: str, op: Any) -> dict[str, Any]:
    """Read the builtin options of ``op`` into a plain dict (empty when the op has none we know)."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if opcode == "FULLY_CONNECTED":
        o = _union(tflite.FullyConnectedOptions, table)
        return {
            "activation": ACTIVATIONS.get(o.FusedActivationFunction(), "UNKNOWN"),
            "keep_num_dims": bool(o.KeepNumDims()),
            "weights_format": o.WeightsFormat(),
        }
    if opcode == "CONV_2D":
        o = _union(tflite.Conv2DOptions, table)
        return {
            "padding": PADDINGS[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": ACTIVATIONS.get(o.FusedActivationFunction(), "UNKNOWN"),
        }
    if opcode == "DEPTHWISE_CONV_2D":
        o = _union(tflite.DepthwiseConv2DOptions, table)
        return {
            "padding": PADDINGS[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "depth_multiplier": o.DepthMultiplier(),
            "activation": ACTIVATIONS.get(o.FusedActivationFunction(), "UNKNOWN"),
        }
    if opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        o = _union(tflite.Pool2DOptions, table)
        return {
            "padding": PADDINGS[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "filter": (o.FilterHeight(), o.FilterWidth()),
            "activation": ACTIVATIONS.get(o.FusedActivationFunction(), "UNKNOWN"),
        }
    if opcode == "RESHAPE":
        o = _union(tflite.ReshapeOptions, table)
        shape = o.NewShapeAsNumpy() if o.NewShapeLength() else []
        return {"new_shape": [int(v) for v in shape]}
    if opcode == "SOFTMAX":
        o = _union(tflite.SoftmaxOptions, table)
        return {"beta": float(o.Beta())}
    if opcode == "MEAN":
        o = _union(tflite.ReducerOptions, table)
        return {"keep_dims": bool(o.KeepDims())}
    if opcode == "ADD":
        o = _union(tflite.AddOptions, table)
        return {"activation": ACTIVATIONS.get(o.FusedActivationFunction(), "UNKNOWN")}
    return {"_unparsed": True}
