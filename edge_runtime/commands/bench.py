"""``tinyfed bench [NAME ...]``: run ``bench/NAME.py`` from the checkout; results go to bench/results/NAME.json.

With no names, the whole suite (``bench/suite.py``) runs within its budget and
prints the summary table of every headline figure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding ``bench/`` (benchmarks ship with the source, not the wheel)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "bench" / "common.py").is_file():
            return candidate
    raise OSError("bench/ not found: run tinyfed bench from a tinyfed checkout")


def bench(args: argparse.Namespace) -> int:
    root = repo_root()
    sys.path.insert(0, str(root))
    suite = importlib.import_module("bench.suite")
    names = args.names or list(suite.SUITE)
    known = sorted(p.stem for p in (root / "bench").glob("*.py") if p.stem not in ("common", "__init__"))
    unknown = [n for n in names if not (root / "bench" / f"{n}.py").is_file()]
    if unknown:
        print(f"tinyfed bench: no benchmark {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"\n=== tinyfed bench {name}{' --full' if args.full else ''}", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main(full=args.full)
        seconds[name] = time.perf_counter() - t0
    total = time.perf_counter() - started
    if len(names) > 1:
        print("\n" + suite.summary(root / "bench" / "results", tuple(names)))
        print("\n" + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()) + f"; total {total / 60:.1f} min")
        if not args.full and not args.names and total > suite.BUDGET_SECONDS:
            print(f"note: the suite took longer than its {suite.BUDGET_SECONDS // 60}-minute budget", file=sys.stderr)
    return 0
