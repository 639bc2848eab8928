"""A device that cannot do its task says so, and no task holds its one thread: through a real Mosquitto.

The first tests drive a real agent with a stand-in gateway that records failure reports as well as updates;
the last ones run the real gateway with real agents, one of them on a CSV file whose labels are not the
model's classes, and a real ``tinyfed device run`` process that waits for a model that never comes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import DeviceAgent
from edge_runtime.data.dataset import DataError, DataSplit
from edge_runtime.device_config import DeviceConfig
from edge_runtime.failures import FailureReason, TaskFailed, failing_as, failure_reason
from edge_runtime.model.backends.base import Backend
from edge_runtime.model.errors import ModelError, ShapeMismatchError, UnsupportedOpError
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.serial import ErrorCode
from gateway.config import GatewayConfig
from gateway.service import Gateway

from .federation import FED, gateway_config, start_agents
from .helpers import INSECURE, Lines, start_link, wait_for
from .test_agent import FED as AGENT_FED
from .test_agent import TOPICS as AGENT_TOPICS
from .test_agent import GatewayStandIn, agent_config, local_data, task, trainable_spec
from .test_device_run import device_run, write_config

WAIT = 60.0  # upper bounds for loopback delivery and training, never performance assertions


# -- one mapping from an error to the reason a report gives ---------------------------------------------------
class _Reasoned(ValueError):
    def __init__(self, reason: object) -> None:
        super().__init__("a data error that knows its reason")
        self.reason = reason


class _BoardRefusal(RuntimeError):
    def __init__(self, code: ErrorCode) -> None:
        super().__init__(f"board refused: {code.name}")
        self.code = code


@pytest.mark.parametrize(
    ("error", "default", "expected"),
    [
        (_Reasoned(FailureReason.LABELS), FailureReason.OTHER, FailureReason.LABELS),  # its own reason first
        (_Reasoned("no_data"), FailureReason.TRAINING, FailureReason.NO_DATA),  # or its reason's name
        (_Reasoned("Shape"), FailureReason.OTHER, FailureReason.SHAPE),
        (_Reasoned(2), FailureReason.TRAINING, FailureReason.TRAINING),  # a bare number is someone else's code
        (ShapeMismatchError("input", (1, 64), (1, 12)), FailureReason.TRAINING, FailureReason.SHAPE),
        (FileNotFoundError(errno.ENOENT, "gone", "own.csv"), FailureReason.OTHER, FailureReason.NO_DATA),
        (DataError("own.csv: empty"), FailureReason.OTHER, FailureReason.NO_DATA),
        (UnsupportedOpError("GELU", 3, "no kernel"), FailureReason.OTHER, FailureReason.UNSUPPORTED),
        (MemoryError(), FailureReason.TRAINING, FailureReason.NO_MEMORY),
        (ModelError("local labels ['cat'] are not classes of the model"), FailureReason.LABELS, FailureReason.LABELS),
        (RuntimeError("something else"), FailureReason.TRAINING, FailureReason.TRAINING),
        (_BoardRefusal(ErrorCode.NO_MEMORY), FailureReason.OTHER, FailureReason.NO_MEMORY),
        (_BoardRefusal(ErrorCode.UNSUPPORTED), FailureReason.OTHER, FailureReason.UNSUPPORTED),
        (_BoardRefusal(ErrorCode.BAD_INPUT), FailureReason.OTHER, FailureReason.SHAPE),
        (_BoardRefusal(ErrorCode.NO_FLASH), FailureReason.OTHER, FailureReason.NO_MEMORY),
        (_BoardRefusal(ErrorCode.INTERNAL), FailureReason.OTHER, FailureReason.TRAINING),
    ],
)
def test_an_error_becomes_the_reason_a_failure_report_gives(
    error: BaseException, default: FailureReason, expected: FailureReason
) -> None:
    assert failure_reason(error, default) == expected


def test_a_step_of_a_task_turns_its_errors_into_failures_naming_what_was_wrong() -> None:
    with pytest.raises(TaskFailed) as caught, failing_as(FailureReason.LABELS):
        raise ModelError("local labels ['cat', 'dog'] are not classes of the model (it knows ['0', '1'])")
    assert caught.value.reason == FailureReason.LABELS and "['cat', 'dog']" in caught.value.detail
    try:  # a cause that knows better wins over the step's default
        raise RuntimeError("reading failed") from FileNotFoundError(errno.ENOENT, "No such file", "own.csv")
    except RuntimeError as exc:
        assert failure_reason(exc, FailureReason.TRAINING) == FailureReason.NO_DATA
    with pytest.raises(TaskFailed) as long, failing_as(FailureReason.TRAINING):
        raise ValueError("x" * 1000)
    assert len(long.value.detail) == 256  # the wire's limit on a report's detail


# -- a real agent and a stand-in gateway that records failure reports ----------------------------------------
class ReportingStandIn(GatewayStandIn):
    """The agent tests' stand-in, which also takes failure reports (and receipts them, as the gateway does)."""

    def __init__(self, broker: MosquittoProcess, manifest: wire.ModelManifest) -> None:
        self.failures: list[wire.TaskFailure] = []
        super().__init__(broker, manifest)

    def _on_update(self, topic: str, payload: bytes) -> None:
        if wire.peek_type(payload) == wire.TaskFailure.TYPE:
            failure = wire.decode(payload, expect=wire.TaskFailure)
            self.link.publish(AGENT_TOPICS.receipt(failure.device), wire.encode(wire.Receipt([failure.report_id])))
            with self.changed:
                self.failures.append(failure)
                self.changed.notify_all()
            return
        super()._on_update(topic, payload)


@pytest.fixture
def stand_in(
    broker: MosquittoProcess, tmp_path: Path, digits: DataSplit, digits_mlp: Graph, backend: Backend
) -> Iterator[tuple[ReportingStandIn, DeviceAgent]]:
    model = write_graph(digits_mlp)
    manifest, chunks = make_manifest(model, trainable_spec(digits_mlp), 4096, federation=AGENT_FED)
    gateway = ReportingStandIn(broker, manifest)
    publish_model(gateway.link, AGENT_TOPICS, manifest, chunks)
    agent = DeviceAgent(agent_config(broker, tmp_path / "dev-1"), local_data(digits), backend).start()
    try:
        assert gateway.wait(
            lambda: (
                (p := gateway.presence.get("dev-1")) is not None
                and p.capabilities is not None
                and p.capabilities.model_version == manifest.version
            )
        ), "no birth naming the installed model"
        yield gateway, agent
    finally:
        agent.stop(timeout=5)
        gateway.stop()


def announce_without_chunks(gateway: ReportingStandIn, model: bytes) -> wire.ModelManifest:
    """A new version's manifest whose chunks never come: the device starts fetching and waits for ever."""
    manifest, _ = make_manifest(model, gateway.manifest.trainable, 4096, federation=AGENT_FED)
    assert gateway.link.publish(AGENT_TOPICS.manifest, wire.encode(manifest), retain=True, timeout=WAIT)
    return manifest


def test_a_model_that_does_not_load_is_reported_at_once_not_at_the_deadline(
    stand_in: tuple[ReportingStandIn, DeviceAgent],
) -> None:
    gateway, agent = stand_in
    broken = b"TFL3" + os.urandom(3000)  # hashes to its version, but is no model the interpreter can load
    manifest, chunks = make_manifest(broken, gateway.manifest.trainable, 1024, federation=AGENT_FED)
    publish_model(gateway.link, AGENT_TOPICS, manifest, chunks)
    wait_for(lambda: manifest.version in agent.fetcher.failed, WAIT, "the device to refuse the broken model")
    doomed = task(manifest.version, round_=4, deadline=int(time.time()) + 3600)
    gateway.send_task("dev-1", wire.encode(doomed))
    assert gateway.wait(lambda: len(gateway.failures) == 1), "no failure report for a model that does not load"
    failure = gateway.failures[0]
    assert (failure.device, failure.round, failure.task_id) == ("dev-1", 4, doomed.task_id)
    assert failure.reason == FailureReason.NO_MODEL
    assert manifest.version.hex()[:12] in failure.detail and "does not install" in failure.detail
    assert agent.outbox.wait_empty(WAIT), "the gateway's receipt did not take the report out of the outbox"


def test_a_wait_for_a_model_that_never_comes_gives_way_to_a_newer_task_and_expires_as_no_model(
    stand_in: tuple[ReportingStandIn, DeviceAgent], digits_mlp: Graph
) -> None:
    gateway, agent = stand_in
    graph = digits_mlp.copy()
    graph.metadata["never"] = b"a version whose chunks never come"
    missing = announce_without_chunks(gateway, write_graph(graph))
    stale = task(missing.version, round_=5, deadline=int(time.time()) + 3600)
    gateway.send_task("dev-1", wire.encode(stale))
    wait_for(agent.busy.is_set, WAIT, "the device to take the task and wait for its model")
    # A newer task takes the thread; it too waits for the model, until its (short) deadline.
    newer = task(missing.version, round_=6, deadline=int(time.time()) + 4)
    gateway.send_task("dev-1", wire.encode(newer))
    assert gateway.wait(lambda: len(gateway.failures) == 1, WAIT), "the expired task was not reported"
    failure = gateway.failures[0]
    assert (failure.task_id, failure.reason) == (newer.task_id, FailureReason.NO_MODEL)
    assert "did not arrive before the deadline" in failure.detail  # the stale one would have held it an hour
    # The thread is free: once the model comes, the next task trains.
    gateway.manifest = missing
    gateway.publish_model(write_graph(graph))
    fresh = task(missing.version, round_=7)
    gateway.send_task("dev-1", wire.encode(fresh))
    assert gateway.wait(lambda: any(u.round == 7 for u in gateway.updates)), "the device did not train afterwards"
    assert [u.round for u in gateway.updates] == [7] and len(gateway.failures) == 1  # round 5 neither sent nor failed


def test_stopping_a_device_that_waits_for_a_model_does_not_wait_for_its_deadline(
    stand_in: tuple[ReportingStandIn, DeviceAgent], digits_mlp: Graph
) -> None:
    gateway, agent = stand_in
    graph = digits_mlp.copy()
    graph.metadata["never"] = b"another version whose chunks never come"
    missing = announce_without_chunks(gateway, write_graph(graph))
    gateway.send_task("dev-1", wire.encode(task(missing.version, deadline=int(time.time()) + 3600)))
    wait_for(agent.busy.is_set, WAIT, "the device to wait for the model")
    worker = agent._worker
    assert worker is not None
    stopped = threading.Thread(target=agent.stop, kwargs={"timeout": WAIT})
    stopped.start()
    stopped.join(WAIT)
    assert not worker.is_alive(), "the task thread still waits for its model"
    assert gateway.failures == []  # stopping is not a failure of the task


# -- the real gateway, real agents, one of them on a CSV file whose labels are not the model's classes ---------
def write_csv(path: Path, x: np.ndarray, labels: list[str]) -> Path:
    """A user's own CSV: 64 numeric features, the label in the last column, a header row."""
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join([*(f"{v:g}" for v in sample), label]) for sample, label in zip(x, labels, strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def csv_agent(broker: MosquittoProcess, storage: Path, csv: Path, backend: Backend) -> DeviceAgent:
    config = DeviceConfig.from_mapping(
        {
            "device": {"id": "bad", "federation": FED, "storage": str(storage)},
            "data": {"source": str(csv)},
            "broker": {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5},
            "trust": INSECURE,  # signatures are tests/test_signatures.py's
            "transport": {"resend_after": 2.0},
        },
        env={},
    )
    return DeviceAgent(config, backend=backend).start()


def write_status_config(path: Path, settings: dict[str, object]) -> Path:
    section = settings["gateway"]
    assert isinstance(section, dict)
    path.write_text(
        "[gateway]\n" + "".join(f'{key} = "{section[key]}"\n' for key in ("federation", "storage", "model"))
    )
    return path


def test_a_device_whose_labels_are_not_the_models_classes_is_reported_and_skipped_until_it_is_born_again(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit, backend: Backend
) -> None:
    own = digits.train.subset(np.arange(300))
    wrong = write_csv(tmp_path / "wrong.csv", own.x, [f"class-{own.classes[c]}" for c in own.y])
    settings = gateway_config(broker, tmp_path / "gw", initial_model, min_devices=2, deadline=600.0)
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    reader = None
    agents = start_agents(broker, tmp_path, digits, backend, 2)
    bad = csv_agent(broker, tmp_path / "bad", wrong, backend)
    gateway.start()
    try:
        from gateway.store import GatewayStore

        reader = GatewayStore(tmp_path / "gw" / "gateway.db")
        wait_for(lambda: reader.failures(), WAIT, "the gateway to record the bad device's failure")
        failure = reader.failures()[0]
        assert failure["device"] == "bad" and failure["reason"] == int(FailureReason.LABELS)
        assert "class-0" in failure["detail"] and "not classes of the model" in failure["detail"]
        assert bad.failed and bad.failed[-1].reason == FailureReason.LABELS
        failed_round = failure["round"]

        # The round did not wait for its deadline: it closed with the other devices' updates.
        def ended(number: int) -> bool:
            return any(r.round == number and r.status != "open" for r in reader.rounds())

        wait_for(lambda: ended(failed_round), WAIT, f"round {failed_round} to end")
        row = next(r for r in reader.rounds() if r.round == failed_round)
        assert row.status == "closed" and row.closed is not None and row.closed < row.deadline
        assert reader.round_counts(failed_round)["train"] == len(reader.selections(failed_round)) - 1

        # Later rounds leave it out, and `gateway status` says why.
        wait_for(lambda: ended(failed_round + 1), WAIT, f"round {failed_round + 1} to end")
        assert "bad" not in {s["device"] for s in reader.selections(failed_round + 1)}
        status = subprocess.run(
            [sys.executable, "-m", "tinyfed", "gateway", "status", "--config",
             str(write_status_config(tmp_path / "gateway.toml", settings))],
            capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "1 left out after a failed task" in status.stdout
        assert "FAILED: labels: " in status.stdout and f"round {failed_round} bad: labels: " in status.stdout

        # Its data fixed and the device restarted (a new birth), it is selected and counted again.
        bad.stop(timeout=10)
        fixed = write_csv(tmp_path / "fixed.csv", own.x, [own.classes[c] for c in own.y])
        bad = csv_agent(broker, tmp_path / "bad", fixed, backend)
        wait_for(lambda: reader.selections(status="delivered") and any(
            s["device"] == "bad" for s in reader.selections(status="delivered")), WAIT,
            "the restarted device's update to be counted")  # fmt: skip
        assert len(reader.failures()) == 1
    finally:
        for agent in [*agents, bad]:
            agent.stop(timeout=5)
        gateway.stop()
        if reader is not None:
            reader.close()


# -- a real `tinyfed device run` waiting for a model that never comes ---------------------------------------------
def test_sigterm_stops_a_device_run_that_waits_for_a_model_that_never_comes(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    topics = Topics("cli")
    gateway = start_link(broker, "tester")
    assert gateway.wait_ready(WAIT)
    model = write_graph(digits_mlp)
    manifest, _ = make_manifest(model, trainable_spec(digits_mlp), 4096, federation="cli")
    assert gateway.publish(topics.manifest, wire.encode(manifest), retain=True, timeout=WAIT)  # chunks never come
    proc = device_run(write_config(tmp_path / "device.toml", broker.url))
    assert proc.stderr is not None and proc.stdout is not None
    log = Lines(proc.stderr)
    try:
        log.seen.wait_until(lambda got: any("fetching" in line for line in got), WAIT, "the device to fetch the model")
        waiting = task(manifest.version, round_=1, deadline=int(time.time()) + 3600)
        assert gateway.publish(topics.task("pi-1"), wire.encode(waiting), timeout=WAIT)
        log.seen.wait_until(lambda got: any("waits for model" in line for line in got), WAIT,
                            "the device to wait for the task's model")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        # A generous bound, far below the task's hour and the old 30 s wait for the task in hand: "a few seconds".
        assert proc.wait(timeout=20) == 0, log.text()
        assert "stopped cleanly" in proc.stdout.read()
        assert "set aside: the member is stopping" in log.text()
    finally:
        if proc.poll() is None:
            proc.kill()
        gateway.stop()


# -- a broker restart while devices hold their updates ----------------------------------------------------------
class HeldAgent(DeviceAgent):
    """A real agent that takes its task, then waits for the test's word before it trains: the test decides
    that the update is made while the broker is down."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = threading.Event()
        self.release = threading.Event()

    def handle(self, task: wire.Task) -> wire.Update:
        self.holding.set()
        assert self.release.wait(WAIT), "the test never let the device train"
        return super().handle(task)


def test_updates_stored_while_the_broker_was_down_count_in_their_round_after_it_restarts(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit, backend: Backend
) -> None:
    settings = gateway_config(broker, tmp_path / "gw", initial_model, min_devices=3, deadline=600.0, rounds=1)
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    agents = start_agents(broker, tmp_path, digits, backend, 3, scheme="iid", agent_class=HeldAgent)
    held = [agent for agent in agents if isinstance(agent, HeldAgent)]
    gateway.start()
    try:
        for agent in held:
            assert agent.holding.wait(WAIT), f"{agent.device_id} got no task"
        assert gateway.open_round is not None and gateway.open_round.number == 1
        deadline = gateway.open_round.row.deadline

        broker.stop()  # SIGTERM: Mosquitto saves its state and exits
        assert gateway.offline.wait(WAIT), "the gateway did not notice the broker was gone"
        wait_for(lambda: not any(a.link.connected.is_set() for a in held), WAIT, "every device to lose the broker")
        for agent in held:
            agent.release.set()
        wait_for(lambda: all(len(a.done) == 1 and len(a.outbox) == 1 for a in held), WAIT,
                 "every device to store its update in its outbox")  # fmt: skip

        broker.start()  # the same port, the same state directory
        assert gateway.finished.wait(WAIT * 2), "round 1 (and the final evaluation) did not end after the restart"
        store = gateway.store
        row = next(r for r in store.rounds() if r.round == 1)
        assert (row.mode, row.status) == ("sync", "closed")
        assert row.closed is not None and row.closed < deadline  # closed by its updates, not by its deadline
        counted = [u.update_id for u in store.round_updates(1, "train")]
        assert sorted(counted) == sorted(a.done[0].update_id for a in held)  # exactly the stored ones, each once
        assert all(a.outbox.wait_empty(WAIT) for a in held), "a device never got its receipt"
    finally:
        for agent in held:
            agent.release.set()
            agent.stop(timeout=5)
        gateway.stop()


def test_data_that_cannot_be_read_for_a_task_is_reported_as_no_data(
    stand_in: tuple[ReportingStandIn, DeviceAgent], tmp_path: Path
) -> None:
    gateway, agent = stand_in
    vanished = tmp_path / "own.csv"

    def read_again() -> object:  # what rereading a file per task meets when the file is gone
        return vanished.read_text()

    agent.task_data = read_again  # type: ignore[assignment,method-assign]
    doomed = task(gateway.manifest.version, round_=9)
    gateway.send_task("dev-1", wire.encode(doomed))
    assert gateway.wait(lambda: len(gateway.failures) == 1), "no failure report for data that vanished"
    failure = gateway.failures[0]
    assert (failure.task_id, failure.reason) == (doomed.task_id, FailureReason.NO_DATA)
    assert str(vanished) in failure.detail
