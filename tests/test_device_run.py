"""``tinyfed device run`` as a process: configuration errors, an unreachable broker, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from edge_runtime.transport.broker import MosquittoProcess, free_port
from edge_runtime.transport.topics import Topics
from tests.helpers import INSECURE_TOML, watch_presence

WAIT = 60.0  # start-up includes importing numpy, sklearn and an interpreter: an upper bound only


def write_config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(
        f"""
[device]
id = "pi-1"
federation = "cli"
storage = "{path.parent / "storage"}"
connect_timeout = 2.0
{extra}

[data]
source = "digits"
shard = "0/10"

[broker]
url = "{url}"
backoff_base = 0.05
backoff_cap = 0.5
{INSECURE_TOML}"""
    )
    return path


def device_run(config: Path, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tinyfed", "device", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def test_a_typo_in_the_config_names_the_table_and_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "device.toml", "mqtt://127.0.0.1:1", extra='idd = "x"')
    proc = device_run(config)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert "[device]: unknown key(s) idd" in err and str(config) in err


def test_an_unreachable_broker_gives_a_clear_message_and_exit_3(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    config = write_config(tmp_path / "device.toml", f"mqtt://127.0.0.1:{port}")
    proc = device_run(config)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 3, err
    assert f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}" in err
    assert "refused" in err.lower() and "TINYFED_BROKER_URL" in err


def test_sigterm_stops_cleanly_and_announces_death(broker: MosquittoProcess, tmp_path: Path) -> None:
    topic = Topics("cli").presence("pi-1")
    watcher, seen = watch_presence(broker, topic, "watcher")
    assert watcher.wait_ready(WAIT)
    proc = device_run(write_config(tmp_path / "device.toml", broker.url))
    try:
        seen.wait_until(lambda got: any(p.online for p in got), WAIT, "the device's birth message")
        birth = next(p for p in seen.items if p.online)
        assert birth.capabilities is not None and birth.capabilities.samples > 0
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        assert "stopped cleanly" in out
        seen.wait_until(lambda got: not got[-1].online, WAIT, "the device's death message")
        assert seen.items[-1].seq == birth.seq  # the death belongs to this birth (Sparkplug's bdSeq)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.stop()
    # Retained: a gateway that starts later still learns the device is gone.
    late_link, late = watch_presence(broker, topic, "late")
    try:
        late.wait_until(lambda got: len(got) > 0, WAIT, "the retained presence message")
        assert late.items[0].online is False
    finally:
        late_link.stop()
