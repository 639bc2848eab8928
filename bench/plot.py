"""Accuracy against cumulative uplink bytes, one line per run: the picture a user compares systems by.

matplotlib (the ``bench`` extra) is imported only here, with the Agg
backend, so a headless hub draws the PNG; without it the benchmark still
writes its JSON and says the plot was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def accuracy_vs_uplink(title: str, metric: str, runs: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed (pip install 'tinyfed[bench]'); {path} not drawn")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, rows in runs.items():
        xs = [max(1, r["uplink_bytes"]) for r in rows]
        ys = [r["score"] for r in rows]
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bytes, all devices (log scale)")
    ax.set_ylabel(f"int8 model {metric} on the held-out test split")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
