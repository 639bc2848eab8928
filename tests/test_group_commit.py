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

import pytest

from edge_runtime import wire
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from gateway.aggregate import update_norm
from gateway.rounds import Rounds
from gateway.store import GatewayStore
from gateway.strategies.fedavgm import FedAvgM
from tests.federation import FED, WAIT, ManualDevice, retained_manifest, small_update
from tests.helpers import INSECURE
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

    assert take(rounds, a, raw_a, "a") == "accept"
    assert take(rounds, a, raw_a, "a") == "duplicate"  # the staged row is seen: a resend is not counted twice
    open_round = rounds.open_round
    assert open_round is not None
    assert rounds.store.staged == 2
    assert open_round.aggregate.count == 0 and rounds.released().receipts == []
    assert committed_ids(db) == []  # nothing on disk, so nothing counted and nothing receipted

    assert take(rounds, b, raw_b, "b") == "accept"  # the third message fills the batch: one commit for all three
    assert rounds.store.staged == 0
    assert committed_ids(db) == [a.update_id, b.update_id]
    assert open_round.aggregate.count == 2
    released = rounds.released()
    assert released.receipts == [("a", a.update_id, None), ("a", a.update_id, None), ("b", b.update_id, None)]
    assert released.counted == 2 and released.lost == []


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
    # Batches of three, and a commit delay longer than the test: only a full batch commits before the kill.
    staging = write_config(tmp_path / "staging.toml", broker, storage, initial_model, commit_batch=3, commit_delay=60.0)
    gateway = GatewayProcess(staging)
    try:
        for device in devices.values():
            assert device.wait(lambda d=device: len(d.tasks) == 1), "round 1 did not reach every device"  # type: ignore[misc]
        sizes = retained_manifest(broker).spec()
        a, c = devices["a"], devices["c"]
        update_c = small_update("c", c.tasks[0], sizes)
        for _ in range(3):  # a resent update fills the batch: committed, then all three receipted
            c.send(wire.encode(update_c))
        assert c.wait(lambda: len(c.receipts) == 3)
        assert all(r.received == [update_c.update_id] for r in c.receipts)

        update_a = small_update("a", a.tasks[0], sizes)
        a.send(wire.encode(update_a))
        a.send(wire.encode(update_a))  # judged a duplicate of the first: proof the first was taken in and staged
        gateway.wait_log(f"update {update_a.update_id.hex()[:12]} of a arrived again")
        assert not a.receipts  # staged, not committed: no receipt
        gateway.kill()
    finally:
        if gateway.proc.poll() is None:
            gateway.kill()
    on_disk = committed_ids(storage / "gateway.db")
    assert update_c.update_id in on_disk  # receipted, so durable
    assert update_a.update_id not in on_disk  # never receipted, so the device still holds it

    restarted = GatewayProcess(write_config(tmp_path / "again.toml", broker, storage, initial_model))
    try:
        a.send(wire.encode(update_a))  # what a device's outbox does with an update never receipted
        assert a.wait(lambda: any(update_a.update_id in r.received for r in a.receipts))
        b = devices["b"]
        b.send(wire.encode(small_update("b", b.tasks[0], sizes)))
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
