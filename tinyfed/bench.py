"""``tinyfed bench [NAME ...]``: run ``bench/NAME.py`` from the checkout; results go to bench/results/NAME.json.

With no names, the whole suite (``bench/suite.py``) runs within its budget and
prints the summary table of every headline figure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from edge_runtime.config import ConfigError
from edge_runtime.paths import check_storage_dir

from .extras import PROJECT, InstalledExtras


def repo_root() -> Path:
    """The checkout holding ``bench/`` (benchmarks ship with the source, not the wheel)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "bench" / "common.py").is_file():
            return candidate
    raise ConfigError("bench/ not found: run tinyfed bench from a tinyfed checkout")


def _check_extras(names: list[str], needs: dict[str, tuple[str, ...]], installed: InstalledExtras) -> None:
    """Every benchmark asked for can run here, or one error listing what each lacks and one pip line for all."""
    lacking = {name: installed.missing(needs.get(name, ())) for name in names}
    lacking = {name: missing for name, missing in lacking.items() if missing}
    if not lacking:
        return
    extras = sorted({extra for name in lacking for extra in needs[name]})
    each = "; ".join(f"{name} needs {', '.join(missing)}" for name, missing in lacking.items())
    others = [n for n in names if n not in lacking]
    rest = f", or run only the others: tinyfed bench {' '.join(others)}" if others else ""
    raise ConfigError(f"tinyfed bench: {each}: pip install '{PROJECT}[{','.join(extras)}]'{rest}")


def bench(args: argparse.Namespace) -> int:
    root = repo_root()
    sys.path.insert(0, str(root))
    suite = importlib.import_module("bench.suite")
    names = args.names or list(suite.SUITE)
    # The suite (and its on-demand list) names the benchmarks; bench/ also holds their helpers (plot, sim_devices,
    # ...), which are not.
    known = (*suite.SUITE, *suite.ON_DEMAND)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no benchmark {', '.join(unknown)}; known: {', '.join(known)}")
    _check_extras(names, suite.EXTRAS, getattr(args, "installed_extras", None) or InstalledExtras.from_metadata())
    # Checked before minutes of measuring, not after: a result that cannot be written is a run lost.
    if args.results is not None:
        results = check_storage_dir(Path(args.results), "--results").resolve()
        os.environ["TINYFED_BENCH_RESULTS"] = str(results)  # the benchmarks read it (bench/common.py)
    elif os.environ.get("TINYFED_BENCH_RESULTS"):
        check_storage_dir(Path(os.environ["TINYFED_BENCH_RESULTS"]), "TINYFED_BENCH_RESULTS")
        results = Path(os.environ["TINYFED_BENCH_RESULTS"])
    else:
        results = check_storage_dir(root / "bench" / "results", "the results folder")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for name in names:
        print(f"\n=== tinyfed bench {name}{' --full' if args.full else ''}", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"bench.{name}").main(full=args.full)
        seconds[name] = time.perf_counter() - t0
    total = time.perf_counter() - started
    if len(names) > 1:
        print("\n" + suite.summary(results, tuple(names)))
        print("\n" + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()) + f"; total {total / 60:.1f} min")
        if not args.full and not args.names and total > suite.BUDGET_SECONDS:
            print(f"note: the suite took longer than its {suite.BUDGET_SECONDS // 60}-minute budget", file=sys.stderr)
    return 0
