"""The operator's command line: `gateway status --json` beside a running gateway, JSON logs, each line once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.logformat import configure_logging
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.wire import accel
from gateway.master import MasterModel
from tests.federation import FED, WAIT, ManualDevice
from tests.helpers import INSECURE_TOML, Lines, wait_for
from tests.operator import AnsweringDevice

TINYFED = [sys.executable, "-m", "tinyfed"]


def gateway_toml(path: Path, storage: Path, model: Path, broker: MosquittoProcess, rounds: int) -> Path:
    path.write_text(
        f'[gateway]\nfederation = "{FED}"\nstorage = "{storage}"\nmodel = "{model}"\n'
        f"[rounds]\nrounds = {rounds}\nmin_devices = 2\ndeadline = 60.0\nreport_every = 1\n"
        f'[broker]\nurl = "{broker.url}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n' + INSECURE_TOML
    )
    return path


def status_json(config: Path) -> dict[str, object]:
    done = subprocess.run([*TINYFED, "gateway", "status", "--config", str(config), "--json"], capture_output=True,
                          text=True, timeout=WAIT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_status_json_and_json_logs_with_each_round_said_once(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    config = gateway_toml(tmp_path / "gateway.toml", tmp_path / "gw", initial_model, broker, rounds=2)
    proc = subprocess.Popen([*TINYFED, "gateway", "run", "--config", str(config), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    err = Lines(proc.stderr, WAIT)
    devices: list[ManualDevice] = []
    try:
        err.wait_for('"event": "started"', "the gateway's start record")
        running = status_json(config)
        assert running["gateway"] == {"running": True, "pid": proc.pid}
        model_sizes = MasterModel(initial_model.read_bytes(), 0).sizes
        devices = [AnsweringDevice(broker, f"s{i}", model_sizes) for i in range(2)]
        wait_for(lambda: len(status_json(config)["devices"]) == 2, WAIT, "both devices in status --json")  # type: ignore[arg-type]
        assert proc.wait(WAIT * 2) == 0, err.text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        for device in devices:
            device.stop()
    lines = err.text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    rounds = [r for r in records if r.get("event") == "round"]
    assert [r["round"] for r in rounds] == [1, 2]  # each round said once
    assert all(r["status"] == "closed" and r["updates"] == 2 and r["uplink_bytes"] > 0 for r in rounds)
    assert sum("round 1 closed" in r["message"] for r in records) == 0  # the machinery's own line is DEBUG now
    assert proc.stdout is not None and proc.stdout.read() == ""  # with JSON logs, nothing for people on stdout
    (started,) = [r for r in records if r.get("event") == "started"]
    # The operator sees which decoder the intake runs: C wherever it is built (CI requires it), else Python.
    assert started["intake_decoder"] == ("C" if accel.native is not None else "Python")
    assert started["intake_decoder"] in started["message"]

    report = status_json(config)
    assert report["gateway"] == {"running": False, "pid": None}
    assert report["federation"] == FED and report["phase"] == "idle" and report["round"] == 3  # 2 + evaluation
    by_device = {d["device"]: d for d in report["devices"]}  # type: ignore[union-attr]  # online when it stopped
    assert set(by_device) == {"s0", "s1"}
    assert all(d["state"] == "online" and d["last_seen"] > 0 and d["failures"] == 0 for d in by_device.values())
    history = report["rounds"]
    assert [(r["round"], r["mode"], r["status"], r["updates"]) for r in history] == [  # type: ignore[union-attr]
        (1, "sync", "closed", 2), (2, "sync", "closed", 2), (3, "eval", "closed", 0)
    ]
    assert history[-1]["reports"] == 2 and history[-1]["accuracy"] == 0.5  # type: ignore[index]
    assert [m["current"] for m in report["models"]] == [False, False, True]  # type: ignore[union-attr]

    text = subprocess.run([*TINYFED, "gateway", "status", "--config", str(config)], capture_output=True, text=True,
                          timeout=WAIT)  # fmt: skip
    assert text.returncode == 0 and "gateway: not running on this storage" in text.stdout


def test_json_log_lines_carry_their_fields_and_replace_earlier_handlers(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(False, "text")
        configure_logging(False, "json")  # the second call replaces the first: a line is written once
        logging.getLogger("gateway.run").info("round 1", extra={"fields": {"event": "round", "round": 1}})
        logging.getLogger("x").debug("not at INFO")
        lines = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "round 1" and record["event"] == "round" and record["round"] == 1
    assert record["logger"] == "gateway.run" and record["level"] == "info"
    with pytest.raises(ValueError, match="log format 'xml' is not one of text, json"):
        configure_logging(False, "xml")
