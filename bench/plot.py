"""Accuracy against cumulative uplink bytes, one line per run: the picture a user compares systems by.

Two renderings of the same picture: a PNG through matplotlib (the
``bench`` extra, imported only here with the Agg backend so a headless hub
draws it), and a character chart printed with the figures, so the curve is
in the terminal, in CI logs and in a pasted report where no image viewer
is, and still there when matplotlib is not installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MARKS = "#o+x*%@&=~^"


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


def accuracy_vs_uplink_text(
    metric: str, runs: dict[str, list[dict[str, Any]]], width: int = 64, height: int = 16
) -> str:
    """The same picture in characters: log-scaled uplink across, score up, one letter per run.

    Where two runs land on one cell the later run's letter is shown; the
    legend names every letter, so nothing is silently dropped from it.
    """
    points = [(max(1, r["uplink_bytes"]), r["score"]) for rows in runs.values() for r in rows]
    if not points:
        return "(no rounds to chart)"
    low_x, high_x = math.log10(min(x for x, _ in points)), math.log10(max(x for x, _ in points))
    low_y, high_y = min(y for _, y in points), max(y for _, y in points)
    span_x, span_y = max(high_x - low_x, 1e-9), max(high_y - low_y, 1e-9)
    grid = [[" "] * width for _ in range(height)]
    legend = []
    for (label, rows), mark in zip(runs.items(), MARKS, strict=False):
        legend.append(f"{mark} {label}")
        for r in rows:
            column = round((math.log10(max(1, r["uplink_bytes"])) - low_x) / span_x * (width - 1))
            row = height - 1 - round((r["score"] - low_y) / span_y * (height - 1))
            grid[row][column] = mark
    lines = []
    for i, cells in enumerate(grid):
        tick = f"{high_y - i * span_y / (height - 1):6.3f}" if i in (0, height // 2, height - 1) else " " * 6
        lines.append(f"{tick} |{''.join(cells)}")
    lines.append(" " * 7 + "+" + "-" * width)
    left, right = f"{10**low_x:,.0f} B", f"{10**high_x:,.0f} B"
    lines.append(" " * 8 + left + " " * max(1, width - len(left) - len(right)) + right)
    lines.append(f"{metric} on the held-out split against cumulative uplink (log scale)")
    lines.extend("  " + entry for entry in legend)
    return "\n".join(lines)
