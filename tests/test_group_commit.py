"""Group commit: updates are committed in batches, and a receipt never goes out before the commit holding it.

The store and the round machinery are driven directly (a second SQLite
connection is what another process, or the disk after a crash, sees), then
a real ``tinyfed gateway run`` on Mosquitto is killed with SIGKILL while
updates are staged: what was receipted survives, what was not is resent by
the device and counted once.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime import wire
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from gateway.admission import UNCOMMITTED
from gateway.aggregate import update_norm
from gateway.rounds import Rounds
from gateway.store import GatewayStore
from gateway.strategies.fedavgm import FedAvgM
from tests.federation import FED, WAIT, ManualDevice, retained_manifest, small_update
from tests.helpers import INSECURE, wait_for
from tests.test_rounds import make_rounds


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def committed_ids(db: Path) -> list[bytes]:
    """The update ids a fresh connection sees: what is on disk, not what one connection has staged."""
    other = sqlite3.connect(db)
    try:
        return [bytes(r[0]) for r in other.execute("SELECT update_id FROM updates ORDER BY received")]
    finally:
        other.close()


def encoded(rounds: Rounds, device: str, task: wire.Task) -> tuple[wire.Update, bytes]:
    raw = wire.encode(small_update(device, task, rounds.sizes))
    return wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes)), raw


def take(rounds: Rounds, update: wire.Update, raw: bytes, device: str) -> str:
    return rounds.intake(update, raw, device, update_norm(update)).outcome.value


def test_updates_are_counted_and_receipted_only_once_their_batch_commits(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=3)
    rounds.max_batch, rounds.keep_receipts = 3, True
    tasks = dict(rounds.step().tasks)
    db = tmp_path / "gw" / "gateway.db"
    a, raw_a = encoded(rounds, "a", tasks["a"])
    b, raw_b = encoded(rounds, "b", tasks["b"])
    c, raw_c = encoded(rounds, "c", tasks["c"])

    assert take(rounds, a, raw_a, "a") == "accept"
    # A resend while the first copy is staged: neither counted twice nor receipted on its own (the first copy's
    # receipt answers it, or, if that commit fails, the device's next resend is judged afresh).
    assert take(rounds, a, raw_a, "a") == "in flight"
    open_round = rounds.open_round
    assert open_round is not None
    assert rounds.store.staged == 1
    assert take(rounds, b, raw_b, "b") == "accept"
    assert open_round.aggregate.count == 0 and rounds.released().receipts == []
    assert committed_ids(db) == []  # nothing on disk, so nothing counted and nothing receipted

    assert take(rounds, c, raw_c, "c") == "accept"  # the third message fills the batch: one commit for all three
    assert rounds.store.staged == 0
    assert committed_ids(db) == [a.update_id, b.update_id, c.update_id]
    assert open_round.aggregate.count == 3
    released = rounds.released()
    assert released.receipts == [("a", a.update_id, None), ("b", b.update_id, None), ("c", c.update_id, None)]
    assert released.counted == 3 and released.lost == []
    assert take(rounds, a, raw_a, "a") == "duplicate"  # now on disk: a resend is a duplicate, receipted "received"


def test_an_update_that_finds_the_intake_idle_is_committed_at_once(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=3)
    rounds.max_batch, rounds.keep_receipts, rounds.idle_commit = 100, True, 0.0  # any pause counts as idle
    tasks = dict(rounds.step().tasks)
    a, raw_a = encoded(rounds, "a", tasks["a"])
    b, raw_b = encoded(rounds, "b", tasks["b"])
    assert take(rounds, a, raw_a, "a") == "accept"
    assert rounds.store.staged == 1  # the first since start: nothing says the intake was idle
    assert take(rounds, b, raw_b, "b") == "accept"  # found the intake idle: committed now, with a
    assert rounds.store.staged == 0
    assert committed_ids(tmp_path / "gw" / "gateway.db") == [a.update_id, b.update_id]
    assert rounds.released().receipts == [("a", a.update_id, None), ("b", b.update_id, None)]


def test_a_round_closed_at_its_deadline_counts_what_was_staged_for_it(tmp_path: Path, model: bytes) -> None:
    rounds, clock = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), min_updates=1)
    rounds.max_batch, rounds.keep_receipts = 100, True
    tasks = dict(rounds.step().tasks)
    a, raw_a = encoded(rounds, "a", tasks["a"])
    assert take(rounds, a, raw_a, "a") == "accept"
    assert rounds.store.staged == 1
    clock.advance(61)  # b never answers; the round closes at its deadline with a's staged update
    closed = rounds.step()
    assert closed.ended is not None and closed.ended.status == "closed" and closed.ended.accepted == 1
    assert committed_ids(tmp_path / "gw" / "gateway.db") == [a.update_id]
    assert rounds.released().receipts == [("a", a.update_id, None)]


def test_another_transaction_commits_the_batch_first_and_its_rollback_keeps_it(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.db")
    item = object()
    assert store.accept(b"u" * 16, 1, 1, "a", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch=item)
    assert committed_ids(tmp_path / "gateway.db") == []
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO meta VALUES ('k', 'v')")
        raise RuntimeError("the other write fails")
    assert committed_ids(tmp_path / "gateway.db") == [b"u" * 16]  # committed on its own, before the other began
    assert store.get_meta("k") is None
    done, lost = store.commit_batch()
    assert list(done) == [item] and list(lost) == []
    store.close()


# -- a real gateway process, killed ----------------------------------------------------------------------------
class GatewayProcess:
    """``tinyfed gateway run`` in its own process, its log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinyfed", "gateway", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_log(self, text: str) -> None:
        with self.changed:
            seen = self.changed.wait_for(lambda: any(text in line for line in self.lines), WAIT)
        assert seen, f"the gateway never logged {text!r}: {''.join(self.lines[-20:])}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)


def write_config(path: Path, broker: MosquittoProcess, storage: Path, model: Path, **gateway: object) -> Path:
    extra = "".join(f"{k} = {v!r}\n" for k, v in gateway.items())
    path.write_text(
        f'[gateway]\nfederation = "{FED}"\nstorage = "{storage}"\nmodel = "{model}"\nconnect_timeout = 20.0\n{extra}'
        "[rounds]\nrounds = 1\nmin_devices = 3\ndeadline = 120.0\nreport_every = 1000\n"
        f'[broker]\nurl = "{broker.url}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n'
        f'[trust]\nmode = "{INSECURE["mode"]}"\n'
    )
    return path


@pytest.fixture
def devices(broker: MosquittoProcess) -> Iterator[dict[str, ManualDevice]]:
    made = {name: ManualDevice(broker, name) for name in ("a", "b", "c")}
    yield made
    for device in made.values():
        device.stop()


def test_a_gateway_killed_between_intake_and_commit_loses_no_receipted_update_and_counts_a_resend_once(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, devices: dict[str, ManualDevice]
) -> None:
    storage = tmp_path / "gw"
    # Batches of two, and a commit delay longer than the test: only a full batch commits before the kill.
    staging = write_config(tmp_path / "staging.toml", broker, storage, initial_model, commit_batch=2, commit_delay=60.0)
    gateway = GatewayProcess(staging)
    try:
        for device in devices.values():
            assert device.wait(lambda d=device: len(d.tasks) == 1), "round 1 did not reach every device"  # type: ignore[misc]
        sizes = retained_manifest(broker).spec()
        a, b, c = devices["a"], devices["b"], devices["c"]
        update_c = small_update("c", c.tasks[0], sizes)
        c.send(wire.encode(update_c))
        c.send(wire.encode(update_c))  # a resend while the first is staged: no receipt of its own, not staged
        gateway.wait_log(f"update {update_c.update_id.hex()[:12]} of c arrived again")
        update_b = small_update("b", b.tasks[0], sizes)
        b.send(wire.encode(update_b))  # fills the batch of two: committed, then both receipted
        assert c.wait(lambda: len(c.receipts) == 1) and b.wait(lambda: len(b.receipts) == 1)
        assert c.receipts[0].received == [update_c.update_id] and b.receipts[0].received == [update_b.update_id]

        update_a = small_update("a", a.tasks[0], sizes)
        a.send(wire.encode(update_a))
        a.send(wire.encode(update_a))  # judged in flight: proof the first was taken in and staged
        gateway.wait_log(f"update {update_a.update_id.hex()[:12]} of a arrived again")
        assert not a.receipts  # staged, not committed: no receipt
        gateway.kill()
    finally:
        if gateway.proc.poll() is None:
            gateway.kill()
    assert len(c.receipts) == 1  # the resend got none of its own
    on_disk = committed_ids(storage / "gateway.db")
    assert update_c.update_id in on_disk and update_b.update_id in on_disk  # receipted, so durable
    assert update_a.update_id not in on_disk  # never receipted, so the device still holds it

    restarted = GatewayProcess(write_config(tmp_path / "again.toml", broker, storage, initial_model))
    try:
        a.send(wire.encode(update_a))  # what a device's outbox does with an update never receipted
        assert a.wait(lambda: any(update_a.update_id in r.received for r in a.receipts))
        assert restarted.proc.wait(WAIT) == 0  # rounds = 1: round 1 closed and the final evaluation ran
    finally:
        if restarted.proc.poll() is None:
            restarted.kill()
    store = GatewayStore(storage / "gateway.db")
    try:
        counted = sorted(u.device for u in store.round_updates(1, "train"))
        assert counted == ["a", "b", "c"]  # each once: c's from before the kill, a's resend, b's
    finally:
        store.close()


def test_receipts_a_close_settled_go_out_while_the_close_is_still_making_its_version(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    from gateway.config import GatewayConfig
    from gateway.service import Gateway
    from tests.federation import HeldStrategy, gateway_config

    # No commit timer to speak of: only the round's deadline settles the batch, and then the close holds.
    settings = gateway_config(broker, tmp_path / "gw", initial_model, min_devices=2, min_updates=1, deadline=3.0)
    settings["gateway"]["commit_delay"] = 60.0  # type: ignore[index]
    strategy = HeldStrategy()
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}), strategy=strategy)
    devices = [ManualDevice(broker, name) for name in ("a", "b")]
    gateway.start()
    try:
        a = devices[0]
        assert a.wait(lambda: len(a.tasks) == 1)
        update = small_update("a", a.tasks[0], gateway.sizes)
        a.send(wire.encode(update))  # b never answers: the deadline closes the round with a's staged update
        assert strategy.entered.wait(WAIT), "the round did not close at its deadline"
        assert a.wait(lambda: any(update.update_id in r.received for r in a.receipts)), "receipt waited for the close"
        assert update.update_id in committed_ids(tmp_path / "gw" / "gateway.db")
    finally:
        strategy.release.set()
        for device in devices:
            device.stop()
        gateway.stop()


def test_a_receipt_waits_for_its_commit_while_the_mqtt_thread_goes_on_staging(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    """The writer is held just before its COMMIT of a's update: meanwhile the gateway's MQTT thread stages b's
    update and answers on its own presence topic (so anything it published before, a receipt for a included, has
    reached the observer), yet no receipt for a; released, a's receipt arrives with its row already on disk."""
    from edge_runtime.transport.broker_config import BrokerConfig
    from edge_runtime.transport.mqtt import MqttLink
    from gateway.config import GatewayConfig
    from gateway.service import Gateway
    from tests.federation import TOPICS, gateway_config

    settings = gateway_config(broker, tmp_path / "gw", initial_model, min_devices=2)
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={}))
    db = tmp_path / "gw" / "gateway.db"
    at_commit, release = threading.Event(), threading.Event()
    write_batch = gateway.store._write_batch

    def held(batch: list[Any]) -> BaseException | None:
        if any(rows.update_id is not None for rows in batch) and not release.is_set():
            at_commit.set()
            assert release.wait(WAIT), "the test never released the commit"
        return write_batch(batch)

    gateway.store._write_batch = held  # type: ignore[method-assign]
    seen: list[tuple[str, bytes, bool]] = []  # (topic, payload, was its update on disk then), in arrival order
    changed = threading.Condition()
    a, b = ManualDevice(broker, "a"), ManualDevice(broker, "b")
    observer = MqttLink(BrokerConfig(url=broker.url), "observer")
    gateway.start()
    try:
        for device in (a, b):
            assert device.wait(lambda d=device: len(d.tasks) == 1)  # type: ignore[misc]
        update_a = small_update("a", a.tasks[0], gateway.sizes)

        def on_message(topic: str, payload: bytes) -> None:
            durable = topic == TOPICS.receipt("a") and update_a.update_id in committed_ids(db)
            with changed:
                seen.append((topic, payload, durable))
                changed.notify_all()

        for topic in (TOPICS.receipt("a"), TOPICS.gateway_presence):
            observer.subscribe(topic, on_message)
        observer.start()
        assert observer.wait_ready(WAIT)

        a.send(wire.encode(update_a))
        assert at_commit.wait(WAIT), "a's update never reached the writer"
        b.send(wire.encode(small_update("b", b.tasks[0], gateway.sizes)))
        wait_for(lambda: gateway.store.staged == 1, WAIT, "the MQTT thread to stage b's update meanwhile")
        stranger = b"not the gateway"
        assert observer.publish(TOPICS.gateway_presence, stranger, timeout=WAIT)

        def answered() -> bool:  # the gateway's presence again, after the stranger's word on its topic
            payloads = [p for t, p, _ in seen if t == TOPICS.gateway_presence]
            return stranger in payloads and gateway._alive in payloads[payloads.index(stranger) :]

        with changed:
            assert changed.wait_for(answered, WAIT), "the gateway did not answer on its presence topic"
        assert not [t for t, _, _ in seen if t == TOPICS.receipt("a")], "a receipt went out before its commit"
        assert update_a.update_id not in committed_ids(db)

        release.set()
        with changed:
            assert changed.wait_for(lambda: any(t == TOPICS.receipt("a") for t, _, _ in seen), WAIT)
            receipts = [(wire.decode(p, expect=wire.Receipt), on_disk) for t, p, on_disk in seen
                        if t == TOPICS.receipt("a")]  # fmt: skip
        assert receipts[0][0].received == [update_a.update_id]
        assert receipts[0][1], "a's receipt arrived before its row was on disk"
    finally:
        release.set()
        observer.stop()
        for device in (a, b):
            device.stop()
        gateway.stop()



def test_what_is_staged_answers_the_intakes_questions_until_its_batch_commits_or_is_lost(tmp_path: Path) -> None:
    """Staged rows live in memory until the writer commits them: known_update, task, outstanding and
    waiting_devices see them meanwhile (a resend is a duplicate, its task delivered), a second connection does
    not; committed, the rows answer from disk; lost with a failed commit, they answer nothing."""
    store = GatewayStore(tmp_path / "gateway.db")
    store.add_selections(1, "train", [("a", b"t" * 16), ("b", b"s" * 16)], bytes(32), 1e12)
    accepted, refused = b"u" * 16, b"r" * 16
    assert store.accept(accepted, 1, 1, "a", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch="a")
    assert not store.accept(accepted, 1, 1, "a", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch="again")
    store.refuse(refused, "b", 1, "first reason", 5, batch="b1")
    store.refuse(refused, "b", 1, "second reason", 5, batch="b2")
    assert committed_ids(tmp_path / "gateway.db") == []
    assert store.known_update(accepted) == UNCOMMITTED and store.known_update(refused) == "first reason"
    task = store.task(1, "a", "train")
    assert task is not None and task.status == "delivered"
    assert store.outstanding(1, "train") == 1 and [d for _, d, _, _ in store.waiting_devices(1)] == ["b"]

    done, lost = store.commit_batch()
    assert list(done) == ["a", "b1", "b2"] and list(lost) == []
    assert committed_ids(tmp_path / "gateway.db") == [accepted]
    assert store.known_update(accepted) == "accepted" and store.known_update(refused) == "first reason"
    assert store.task(1, "a", "train").status == "delivered"  # type: ignore[union-attr]  # now from disk

    duplicates: list[str] = []  # an id known on disk but not to the intake: found when its batch is written
    assert store.accept(accepted, 1, 1, "b", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch="dup",
                        on_duplicate=lambda: duplicates.append("dup"))  # fmt: skip
    done, lost = store.commit_batch()
    assert list(done) == ["dup"] and list(lost) == [] and duplicates == ["dup"]
    assert store.task(1, "b", "train").status == "sent"  # type: ignore[union-attr]  # nothing of it was written

    lost_id = b"l" * 16
    assert store.accept(lost_id, 1, 1, "b", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch="lost")
    assert store.known_update(lost_id) == UNCOMMITTED
    store._write_batch = lambda batch: sqlite3.OperationalError("database or disk is full")  # type: ignore[method-assign]
    done, lost = store.commit_batch()
    assert list(done) == [] and list(lost) == ["lost"] and store.batch_error is not None
    assert store.known_update(lost_id) is None  # the device resends it, and it counts then
    assert store.task(1, "b", "train").status == "sent"  # type: ignore[union-attr]
    assert store.outstanding(1, "train") == 1
    store.close()


def test_the_writer_commits_at_most_commit_batch_messages_per_fsync(tmp_path: Path) -> None:
    """[gateway] commit_batch bounds a batch even when the writer finds more staged ("1 = one each")."""
    store = GatewayStore(tmp_path / "gateway.db")
    store.batch_limit = 2
    batches: list[int] = []
    write_batch = store._write_batch

    def counted(batch: list[Any]) -> BaseException | None:
        batches.append(len(batch))
        return write_batch(batch)

    store._write_batch = counted  # type: ignore[method-assign]
    for i in range(5):
        store.refuse(bytes([i]) * 16, "a", 1, "why", 5, batch=i)
    done, lost = store.commit_batch()
    assert list(done) == [0, 1, 2, 3, 4] and list(lost) == [] and batches == [2, 2, 1]
    assert [r["update_id"] for r in store.refusals()] == [bytes([i]) * 16 for i in range(5)]
    store.close()


def test_a_resend_of_an_update_whose_commit_fails_is_not_receipted_and_counts_when_resent(
    tmp_path: Path, model: bytes
) -> None:
    """The resend arrives while its first copy awaits its commit, in a later chunk of the writer's batch. The
    first chunk fails (a full disk): had the resend been recorded as a duplicate, its chunk would commit and send
    "received" for an update that is on no disk, and the device would drop it. It gets nothing instead, and the
    device's next resend is counted."""
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=3)
    rounds.max_batch, rounds.keep_receipts = 3, True
    rounds.store.batch_limit = 1  # one message per commit, as [gateway] commit_batch = 1 makes the writer
    tasks = dict(rounds.step().tasks)
    a, raw_a = encoded(rounds, "a", tasks["a"])
    b, raw_b = encoded(rounds, "b", tasks["b"])
    write = rounds.store._write_batch
    failed: list[int] = []

    def first_write_fails(batch: Any) -> BaseException | None:
        if not failed:
            failed.append(len(batch))
            return sqlite3.OperationalError("database or disk is full")
        return write(batch)

    rounds.store._write_batch = first_write_fails  # type: ignore[method-assign]
    assert take(rounds, a, raw_a, "a") == "accept"
    assert take(rounds, a, raw_a, "a") == "in flight"
    assert take(rounds, b, raw_b, "b") == "accept"
    released = rounds.flush()  # chunk 1 (a) fails, chunk 2 (b) commits
    assert failed == [1] and [p.receipt for p in released.lost] == [("a", a.update_id, None)]
    assert released.receipts == [("b", b.update_id, None)]  # nothing for a: neither its first copy nor its resend
    assert committed_ids(tmp_path / "gw" / "gateway.db") == [b.update_id]

    assert take(rounds, a, raw_a, "a") == "accept"  # the device still holds it and resends: judged afresh
    assert rounds.flush().receipts == [("a", a.update_id, None)]
    assert sorted(committed_ids(tmp_path / "gw" / "gateway.db")) == sorted([a.update_id, b.update_id])


def test_a_commit_whose_rollback_also_fails_loses_its_items_visibly(tmp_path: Path) -> None:
    """A disk that fails the COMMIT can fail the ROLLBACK too: the batch is still lost and said so, and nothing
    of it stays in the intake's view (a resend is new, its task still open)."""
    store = GatewayStore(tmp_path / "gateway.db")
    store.add_selections(1, "train", [("a", b"t" * 16)], bytes(32), 1e12)
    update = b"u" * 16
    assert store.accept(update, 1, 1, "a", "train", 10, 10.0, bytes(32), 5, 40, b"x", batch="a")

    class FailingWriter:
        in_transaction = True

        def execute(self, sql: str, *args: object) -> None:
            if sql != "BEGIN IMMEDIATE":
                raise sqlite3.OperationalError(f"disk I/O error at {sql.split()[0]}")

    real, store._writer = store._writer, FailingWriter()  # type: ignore[assignment]
    done, lost = store.commit_batch()
    store._writer = real
    assert list(done) == [] and list(lost) == ["a"]
    assert store.batch_error is not None and "ROLLBACK failed" in str(store.batch_error.__notes__)
    assert store.known_update(update) is None and store.unsettled == 0
    assert store.task(1, "a", "train").status == "sent"  # type: ignore[union-attr]
    store.close()
