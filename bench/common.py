"""What every benchmark shares: the machine's description, the JSON result file, the printed table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where results go: ``bench/results`` unless ``tinyfed bench --results DIR`` (TINYFED_BENCH_RESULTS) says else.

    A trial run (a test, a changed branch) then leaves the committed figures alone.
    """
    chosen = os.environ.get("TINYFED_BENCH_RESULTS")
    return Path(chosen) if chosen else RESULTS


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    system = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {system}"


def rss_mib(field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_result(name: str, figures: dict[str, float], details: dict[str, Any]) -> Path:
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "name": name,
        "machine": machine(),
        "command": f"tinyfed bench {name}",
        "argv": sys.argv,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "figures": figures,
        "details": details,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    return path


def print_table(name: str, figures: dict[str, float]) -> None:
    print(f"\n{name}  ({machine()})")
    width = max(len(k) for k in figures) if figures else 10
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
