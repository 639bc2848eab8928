"""What the operator sees and does: the robustness lines of ``gateway status`` and ``gateway release DEVICE``."""

from __future__ import annotations

import argparse
import math
import time

from edge_runtime.config import ConfigError

from ..config import GatewayConfig
from ..store import GatewayStore
from .detector import release
from .persistence import at_bound_reference


def status_lines(config: GatewayConfig, store: GatewayStore, last: int = 20) -> list[str]:
    """The detector's setting, every quarantined device with its reason, the latest flags, and Krum's picks."""
    r = config.robustness
    reliabilities = store.reliabilities()
    flagged = store.contributions(flagged=True, limit=last)
    if not r.detect:
        lines = ["robustness: detector off"]
        if reliabilities:
            lines[0] += f" ({len(reliabilities)} devices scored while it was on)"
    else:
        weights = "reliability x samples" if r.reliability_weights else "samples"
        below = f"below reliability {r.quarantine_below:g}" if r.quarantine_below > 0 else "never"
        history = (f", history cosine < {r.history_min_cosine:g} after {r.min_history} rounds" if r.history else "")
        if r.history and r.bound_share:
            bound = at_bound_reference(config.rounds.norm_bound, config.rounds.clip_norm)
            history += (f", last {r.min_history} updates >= {r.bound_share:g}x the norm bound ({bound:g})"
                        if math.isfinite(bound) else ", updates at the norm bound: not judged ([rounds] clip_norm "
                        "scales updates first)")  # fmt: skip
        if r.history and r.validation and r.dormant_share:
            history += (f", dormant shares summed over rounds (x {r.history_decay:g} a round) > "
                        f"{r.dormant_share:g}")  # fmt: skip
        clip = f"; updates clipped to {r.clip_to_median:g}x the round's median norm" if r.clip_to_median else ""
        hub = (f", validation {r.validation}: loss change at {r.loss_step:g}x the update z > {r.threshold:g}"
               + (f", dormant share > {r.dormant_share:g}" if r.dormant_share else "")) if r.validation else ""
        lines = [f"robustness: detector on (norm z > {r.threshold:g} and > {r.norm_ratio:g}x the round's median, "
                 f"cosine < {r.min_cosine:g}{history}{hub}); flagged updates "
                 f"{'not counted' if r.exclude_flagged else 'counted'}{clip}; weights {weights}; quarantine {below}"
                 ]  # fmt: skip
    quarantined = [x for x in reliabilities if x.quarantined]
    for x in quarantined:
        lines.append(f"  QUARANTINED {x.device} since round {x.since} (reliability {x.score:.2f}, {x.flags} flags in "
                     f"{x.rounds} scored rounds): {x.reason}; `tinyfed gateway release {x.device}` puts it back")
    low = sorted((x for x in reliabilities if not x.quarantined and x.score < 1.0), key=lambda x: x.score)[:5]
    if low:
        lines.append("  lowest reliability: " + ", ".join(f"{x.device} {x.score:.2f}" for x in low))
    if flagged:
        lines.append("  latest flags:")
        for round_, c in flagged:
            why = c.reason or "not counted"
            lines.append(f"    round {round_} {c.device}: {why}{'' if c.counted else ' (recorded, not counted)'}")
    picks: dict[int, list[str]] = {}
    for round_, c in store.contributions(limit=2000):
        if c.chosen:
            picks.setdefault(round_, []).append(c.device)
    for round_ in sorted(picks, reverse=True)[:3]:
        lines.append(f"  round {round_}: the strategy picked {', '.join(sorted(picks[round_]))}")
    return lines


def release_command(args: argparse.Namespace) -> int:
    """Put a quarantined device back: reliability 1, selected again (a running gateway reads it at its next step)."""
    config = GatewayConfig.load(args.config)
    config.require_state()
    store = GatewayStore(config.storage / "gateway.db")
    try:
        note = f"released by the operator at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            release(store, args.device, note)
        except KeyError:
            quarantined = sorted(store.quarantined())
            raise ConfigError(f"device {args.device!r} is not quarantined in {config.storage}; quarantined: "
                              f"{', '.join(quarantined) or 'none'}") from None  # fmt: skip
    finally:
        store.close()
    print(f"{args.device} released: reliability 1, selected again from the next round")
    return 0
