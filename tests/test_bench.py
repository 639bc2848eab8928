"""``tinyfed bench`` as a user runs it: real benchmarks, real result files, the summary table and the chart."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.plot import MARKS, accuracy_vs_uplink_text
from bench.suite import HEADLINES, summary

ROOT = Path(__file__).resolve().parents[1]


def tinyfed_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyfed", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_an_unknown_or_helper_name_is_refused_with_the_known_names() -> None:
    run = tinyfed_bench("no_such_bench", "plot")
    assert run.returncode == 2
    assert "no benchmark no_such_bench, plot" in run.stderr
    assert "fl_digits" in run.stderr and "serial_link" in run.stderr
    assert "downlink" in run.stderr  # on demand: not in the suite, but named


def test_a_results_folder_that_cannot_be_made_is_refused_before_anything_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = tinyfed_bench("aggregate", "--results", str(blocker / "results"))
    assert run.returncode == 2
    assert f"--results {blocker / 'results'}: {blocker} is a file, not a folder" in run.stderr
    assert "=== tinyfed bench aggregate" not in run.stdout


def test_two_benchmarks_write_their_results_and_the_summary_table(tmp_path: Path) -> None:
    committed = ROOT / "bench" / "results" / "aggregate.json"
    before = committed.read_bytes() if committed.is_file() else None
    run = tinyfed_bench("aggregate", "transport", "--results", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("aggregate", "transport"):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["command"] == f"tinyfed bench {name}"
        assert "cores" in data["machine"] and data["when"][:2] == "20"
        for key in HEADLINES[name]:
            value = data["figures"][key]
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, key, value)
            assert f"| {name} | `{key}` |" in run.stdout
    assert "total" in run.stdout
    assert (committed.read_bytes() if committed.is_file() else None) == before  # --results left them alone


def test_the_text_chart_places_every_run_and_names_it_in_the_legend() -> None:
    runs = {
        "dense": [{"uplink_bytes": 1_000, "score": 0.2}, {"uplink_bytes": 1_000_000, "score": 0.9}],
        "sparse": [{"uplink_bytes": 10, "score": 0.5}],
    }
    chart = accuracy_vs_uplink_text("accuracy", runs, width=20, height=5).splitlines()
    rows = [line.split("|", 1)[1] for line in chart[:5]]
    dense, sparse = MARKS[0], MARKS[1]
    assert rows[0].rstrip().endswith(dense)  # best score, most bytes: top right
    assert rows[-1].index(dense) > 0 and rows[-1].strip() == dense  # worst score: bottom row
    assert rows[2].startswith(sparse)  # fewest bytes: left edge, mid score
    assert chart[0].startswith(" 0.900") and chart[4].startswith(" 0.200")
    assert "10 B" in chart[6] and "1,000,000 B" in chart[6]
    assert f"  {dense} dense" in chart and f"  {sparse} sparse" in chart


def test_a_headline_only_a_full_run_makes_is_named_as_such_not_shown_as_a_bare_dash(tmp_path: Path) -> None:
    key, *_ = HEADLINES["fl_privacy"]
    for argv, shown in ((["tinyfed", "bench", "fl_privacy"], "(--full only)"),
                        (["tinyfed", "bench", "fl_privacy", "--full"], "-")):
        (tmp_path / "fl_privacy.json").write_text(json.dumps({"argv": argv, "when": "2026-12-01T00:00", "figures": {}}))
        assert f"| fl_privacy | `{key}` | {shown} |" in summary(tmp_path, ("fl_privacy",))
