"""``tinyfed bench agent_memory``: a real agent process on Mosquitto, its RSS read while it trains."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.suite import HEADLINES

ROOT = Path(__file__).resolve().parents[1]


def test_agent_memory_reads_a_training_agents_rss_and_the_device_path_imports_no_heavy_library(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tinyfed", "bench", "agent_memory", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((tmp_path / "agent_memory.json").read_text())
    figures, details = data["figures"], data["details"]
    for key in HEADLINES["agent_memory"]:
        assert isinstance(figures[key], int | float) and math.isfinite(figures[key]) and figures[key] > 0, key
    # The agent trained: five updates were receipted while the sampler read its RSS.
    assert details["running"]["samples"] > 0
    assert figures["agent_peak_rss_mib"] >= figures["agent_rss_mib"] >= figures["agent_rss_anon_mib"]
    # What it imports beyond the interpreter, numpy, paho and its own code: the flatbuffers schema only.
    assert set(details["imports"]["heavy_packages_imported"]) <= {"tflite"}
    # The agent that trained holds no cryptography (no secure round came) and only the interpreter it runs.
    mapped = set(details["running"]["packages_mapped"])
    assert "numpy" in mapped and "cryptography" not in mapped and "tflite_micro" not in mapped, mapped
    if "running_micro" in details:
        assert "ai_edge_litert" not in details["running_micro"]["packages_mapped"]
    # The floor (python, numpy, paho) is below the agent, and the import steps add up to what is measured after them.
    assert 0 < figures["agent_floor_mib"] < figures["agent_rss_after_imports_mib"] <= figures["agent_rss_mib"] + 1
    assert math.isclose(sum(details["imports"]["increments_mib"].values()), figures["agent_rss_after_imports_mib"])
