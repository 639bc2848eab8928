"""Differential privacy at the gateway: the accountant, the noise on the aggregate, and the ledger's entries.

See docs/privacy.md for the guarantee and which settings it covers. The
accountant is Google's dp-accounting (the ``privacy`` extra), imported only
when a federation's ``[privacy] mode`` is not ``off``.
"""

from .accountant import Accountant, LedgerEntry, rounds_left
from .mechanism import DpRelease, adapted_clip, count_stddev, release, round_generator, update_noise_multiplier

__all__ = [
    "Accountant",
    "DpRelease",
    "LedgerEntry",
    "adapted_clip",
    "count_stddev",
    "release",
    "round_generator",
    "rounds_left",
    "update_noise_multiplier",
]
