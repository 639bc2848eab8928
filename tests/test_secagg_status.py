"""The operator's view of secure rounds: ``tinyfed gateway status`` (text and --json), run as the operator runs it.

A secure round's bytes are in the rounds table like any round's (exactly what the devices' answers weighed on
the wire), its updates are its masked inputs, a round with distributed DP shows as ``distributed-dp`` (not
"off"), and an open session shows its step, how many masked inputs are in and what a sum needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.secagg.participant import SecAggParticipant
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.outbox import OutboxEntry

from .federation import WAIT, start_agents
from .helpers import wait_for
from .test_secagg_federation import secure_gateway

NOISE = 0.5


def count_answers(agents: list[DeviceAgent]) -> dict[int, int]:
    """The bytes of every secure aggregation answer the devices hand to their outbox, per round."""
    sent: dict[int, int] = {}
    lock = threading.Lock()
    for agent in agents:
        sender = agent.secagg.sender
        original = sender.submit

        def submit(entry: OutboxEntry, original: Any = original) -> None:
            round_ = int(entry.label.rsplit(" ", 1)[1])
            with lock:
                sent[round_] = sent.get(round_, 0) + len(entry.payload)
            original(entry)

        sender.submit = submit  # type: ignore[method-assign]
    return sent


def held_at_collect_of(agent: DeviceAgent, round_: int) -> threading.Event:
    """The device does not mask its input of ``round_`` until the returned event is set."""
    participant: SecAggParticipant = agent.secagg
    original = participant._handle
    release = threading.Event()

    def handle(message: Any) -> None:
        session = participant.session
        if isinstance(message, wire.SecAggCollect) and session is not None and session.setup.round == round_:
            assert release.wait(WAIT * 2), "the test never let the device mask its input"
        original(message)

    participant._handle = handle  # type: ignore[method-assign]
    return release


def status(toml: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(toml), *extra],
                          capture_output=True, text=True, timeout=WAIT * 2)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_gateway_status_shows_a_secure_rounds_bytes_its_distributed_dp_and_the_open_session(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    # The session is held open while two status processes start: a step deadline of a minute keeps it open on a
    # loaded machine (ten seconds did not: the session had timed out when status read it).
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=2, deadline=300.0, noise_multiplier=NOISE,
                             step_deadline=60.0)  # fmt: skip
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[gateway]\nstorage = "{tmp_path / "gw"}"\n[rounds]\nmin_devices = 4\ndeadline = 300.0\n'
                    f'[secagg]\nmode = "secagg"\nstep_deadline = 60.0\nnoise_multiplier = {NOISE}\n'
                    '[trust]\nmode = "insecure"\n')  # fmt: skip
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    sent = count_answers(agents)
    release = held_at_collect_of(agents[0], 2)
    try:
        # Round 2's session waits for d00's masked input: the other three are in.
        wait_for(lambda: json.loads(gateway.store.get_meta("secagg_session") or "{}").get("masked") == 3,
                 WAIT * 3, "round 2's session to hold three masked inputs")  # fmt: skip
        report = json.loads(status(toml, "--json"))
        text = status(toml)
        release.set()
        assert gateway.finished.wait(WAIT * 3), "the secure federation did not finish"
    finally:
        release.set()
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()

    session = report["secagg"]["session"]
    assert (session["round"], session["step"], session["devices"]) == (2, "masked", 4)
    assert (session["masked"], session["threshold"], session["min_survivors"]) == (3, 3, 3)
    first = next(r for r in report["rounds"] if r["round"] == 1)
    assert first["status"] == "closed" and first["updates"] == 4 and first["privacy"] == "distributed-dp"
    assert first["uplink_bytes"] == sent[1]  # every answer of round 1, exactly as the devices sent them
    assert first["dense_bytes"] == 4 * gateway.rounds.dense_bytes  # four masked inputs, each "dense" float32

    assert "session of round 2: step masked" in text and "3 of 4 masked inputs in" in text
    row = next(line for line in text.splitlines() if line.split()[:2] == ["1", "closed"])
    assert "distributed-dp" in row and f" {sent[1]} " in row
    assert "WITHOUT A BUDGET" in text and "privacy: off" not in text
