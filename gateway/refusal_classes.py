"""A refusal's free-text reason reduced to one of a few classes: the Prometheus label, and the key under which
the store keeps the totals of the refusals ``[retention] refusals`` deleted (so the counters never go down).
"""

from __future__ import annotations

import re

# First match wins: (class, pattern over the refusal's text). Anything else is "other".
REFUSAL_CLASSES: tuple[tuple[str, str], ...] = (
    ("replay", r"^replay of update id"),
    ("device_mismatch", r"does not match its topic"),
    ("no_open_round", r"^no round is open"),
    ("round_closing", r"is closing"),
    ("no_evaluation_open", r"no evaluation is open|while the final model is evaluated"),
    ("zero_samples", r"^zero samples"),
    ("norm_bound", r"exceeds the bound"),
    ("wrong_round", r"is not the open round"),
    ("stale", r"versions stale"),
    ("wrong_base", r"base version|not of the current model"),
    ("no_task", r"has no open (evaluation )?task"),
    ("fragment", r"^fragment:"),
    # gateway/trust.py opens every message: a refused envelope is a ValueRejected on envelope.* (docs/security.md)
    ("signature", r"^ValueRejected: envelope|signature|not signed|unknown key id|revoked"),
    ("malformed", r"^(MalformedCBOR|SchemaError|LimitExceeded|MessageTooLarge|ValueRejected|WireError)\b"),
)
_COMPILED = tuple((name, re.compile(pattern)) for name, pattern in REFUSAL_CLASSES)


def refusal_class(reason: str) -> str:
    """A refusal's reason reduced to one of a few label values (the text itself names rounds and ids)."""
    for name, pattern in _COMPILED:
        if pattern.search(reason):
            return name
    return "other"
