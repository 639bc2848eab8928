"""Central DP through a real Mosquitto: a gateway process SIGKILLed mid-round keeps an exact privacy ledger.

The ledger entry of a round is written in the transaction that closes the round (store.finish_round), and a
round's updates are committed before their receipts: a gateway killed between two updates of a DP round
rebuilds the round from the stored updates, closes it once, and records exactly one entry for it, so the
epsilon ``gateway status`` reports afterwards is the accountant's for the rounds that really closed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess
from gateway.master import MasterModel
from gateway.privacy.accountant import Accountant
from gateway.store import GatewayStore

from .federation import FED, WAIT, ManualDevice, small_update
from .helpers import Lines


def test_a_gateway_killed_mid_round_under_central_dp_keeps_an_exact_ledger(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    storage = tmp_path / "gw"
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        f'[gateway]\nfederation = "{FED}"\nstorage = "{storage}"\nmodel = "{initial_model}"\n'
        "[rounds]\nrounds = 2\nmin_devices = 3\ndeadline = 120.0\n"
        '[privacy]\nmode = "central-dp"\nsampling_rate = 1.0\nnoise_multiplier = 2.0\nclip = 0.01\n'
        "epsilon = 50.0\ndelta = 1e-3\n"
        f'[broker]\nurl = "{broker.url}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n'
        '[trust]\nmode = "insecure"\n'  # ManualDevice sends unsigned updates; tests/test_signatures.py signs
    )
    command = [sys.executable, "-m", "tinyfed", "gateway"]
    sizes = MasterModel(initial_model.read_bytes(), 0).sizes

    def start_gateway() -> subprocess.Popen[str]:
        return subprocess.Popen([*command, "run", "--config", str(toml)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    proc = start_gateway()
    devices = [ManualDevice(broker, f"m{i}") for i in range(3)]
    try:
        # Sampling rate 1: every eligible device is asked, each task carrying the round's clip.
        for device in devices:
            assert device.wait(lambda d=device: len(d.tasks) >= 1), f"{device.name} got no task in round 1"  # type: ignore[misc]
        tasks = [device.tasks[0] for device in devices]
        assert all(t.round == 1 and t.clip == float(np.float32(0.01)) and t.clip_bit is False for t in tasks)
        for device, task in zip(devices[:2], tasks[:2], strict=True):
            device.send(wire.encode(small_update(device.name, task, sizes)))
            assert device.wait(lambda d=device: len(d.receipts) >= 1), f"no receipt for {device.name}"  # type: ignore[misc]
        store = GatewayStore(storage / "gateway.db")
        assert store.round_counts(1)["train"] == 2 and store.ledger() == []  # committed, not yet closed
        store.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)

        proc = start_gateway()
        lines = Lines(proc.stdout, WAIT)
        devices[2].send(wire.encode(small_update(devices[2].name, tasks[2], sizes)))
        lines.wait_for("round    1 closed updates    3", "round 1 to close with the three updates")
        for device in devices:
            assert device.wait(lambda d=device: any(t.round == 2 for t in d.tasks)), f"{device.name}: no round 2"  # type: ignore[misc]
            task = next(t for t in device.tasks if t.round == 2)
            device.send(wire.encode(small_update(device.name, task, sizes)))
        assert proc.wait(WAIT * 2) == 0, proc.stderr.read() if proc.stderr else ""
        assert "round    2 closed updates    3" in lines.text()
    finally:
        if proc.poll() is None:
            proc.kill()
        for device in devices:
            device.stop()

    store = GatewayStore(storage / "gateway.db")
    ledger = store.ledger()
    assert [(e.round, e.mode, e.population, e.sampling_rate, e.participants) for e in ledger] == [
        (1, "central-dp", 3, 1.0, 3),
        (2, "central-dp", 3, 1.0, 3),
    ]
    assert [r.privacy for r in store.rounds()] == ["central-dp"] * 3  # two training rounds and the evaluation
    assert sorted(u.device for u in store.round_updates(1, "train")) == ["m0", "m1", "m2"]
    store.close()
    spent = Accountant("rdp", 1e-3).epsilon(Counter({("central-dp", 1.0, 2.0): 2}))
    status = subprocess.run([*command, "status", "--config", str(toml)], capture_output=True, text=True, timeout=WAIT)
    assert status.returncode == 0, status.stderr
    assert f"epsilon {spent:.4g} spent (rdp)" in status.stdout and "2 rounds in the ledger" in status.stdout
