"""``tinyfed bench NAME``: run ``bench/NAME.py`` from the checkout; results go to bench/results/NAME.json."""

from __future__ import annotations

import argparse
import importlib
import sys
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
    status = 0
    for name in args.names:
        if not (root / "bench" / f"{name}.py").is_file():
            known = sorted(p.stem for p in (root / "bench").glob("*.py") if p.stem not in ("common", "__init__"))
            print(f"tinyfed bench: no benchmark {name!r}; known: {', '.join(known)}", file=sys.stderr)
            status = 2
            continue
        module = importlib.import_module(f"bench.{name}")
        module.main(full=args.full)
    return status
