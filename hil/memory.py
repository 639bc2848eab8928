"""The emulated board's RAM budget: what the reference firmware holds, counted in C sizes.

The board has one pool of RAM (default 256 KiB). Out of it come the stack
and the two frame buffers (fixed), the TFLite Micro tensor arena (sized
to the model: what TFLM's recording allocator reports, plus the margin
``arena_with_margin`` adds), and, during a training task, the buffers to
train the last FULLY_CONNECTED layer. Inference and training do not run
at once, so the arena is counted once.

The training buffers are what a C implementation of the same algorithm
needs: float32 weights and bias being trained, their momentum and
gradient, the error-feedback residual, the backbone's int8 features for
every local sample (computed once per task, then reused every epoch), one
dequantised batch with its logits and gradients, and the encoded update.
The model's own int8 weights stay in flash (executed in place). The
Python emulation holds more than this (Python objects); what is checked
against the budget is what the firmware would need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from firmware_bridge.framing import max_encoded_size

STACK_AND_GLOBALS = 8 * 1024


@dataclass
class MemoryReport:
    ram: int
    arena: int  # tensor arena the model needs (recorded + margin)
    system: int  # stack, globals and the two frame buffers
    training: dict[str, int]  # buffer -> bytes, empty when no training is planned

    @property
    def training_total(self) -> int:
        return sum(self.training.values())

    @property
    def total(self) -> int:
        return self.arena + self.system + self.training_total

    @property
    def free(self) -> int:
        return self.ram - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.ram

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"training_total": self.training_total, "total": self.total, "free": self.free}

    def describe(self) -> str:
        lines = [f"RAM budget {self.ram:,} B"]
        lines.append(f"  tensor arena          {self.arena:>9,} B")
        lines.append(f"  stack, frame buffers  {self.system:>9,} B")
        for name, size in self.training.items():
            lines.append(f"  train: {name:<14} {size:>9,} B")
        lines.append(f"  total                 {self.total:>9,} B  ({100 * self.total / self.ram:.1f}% of the budget)")
        return "\n".join(lines)


def system_bytes(max_frame: int) -> int:
    return STACK_AND_GLOBALS + 2 * max_encoded_size(max_frame)


def training_buffers(
    in_features: int, out_features: int, samples: int, batch_size: int, density: float
) -> dict[str, int]:
    """Bytes per buffer to train a ``in_features x out_features`` dense layer on ``samples`` samples."""
    params = in_features * out_features + out_features
    batch = min(batch_size, max(samples, 1))
    nnz = max(1, round(params * density))
    return {
        "weights_f32": 4 * params,
        "momentum_f32": 4 * params,
        "gradient_f32": 4 * params,
        "residual_f32": 4 * params,
        "features_int8": samples * in_features,
        "batch_f32": 4 * batch * (in_features + 2 * out_features),
        "update": 5 * nnz + 256,  # index + int8 value per entry, at most; header and metrics
    }
