"""Sparsification with error feedback and value quantisation: what makes an update tiny.

See :class:`Compressor` (device side) and :func:`decompress` (gateway side).
"""

from .compressor import CompressionConfig, CompressionResult, Compressor, Selection, decompress
from .feedback import ResidualStore
from .quantize import quantize_values

__all__ = [
    "CompressionConfig",
    "CompressionResult",
    "Compressor",
    "ResidualStore",
    "Selection",
    "decompress",
    "quantize_values",
]
