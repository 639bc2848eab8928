"""The gateway's store as its readers and its intake see it.

A reader beside a gateway that is creating its store (``gateway status``, the dashboard, the metrics page):
CI once caught ``gateway status --json`` between two of the store's CREATE TABLE statements: the file and
``models`` were there, ``privacy_ledger`` was not, and status died with "no such table". The test below reads
the store through the readers' own code at every statement the gateway runs while creating it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import ConfigError
from gateway.readonly import open_readonly
from gateway.report import snapshot
from gateway.store import INSERT_REFUSAL, GatewayStore


def test_a_reader_sees_no_store_or_the_whole_store_at_every_step_of_its_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gateway.db"
    seen: list[str] = []  # per statement the gateway ran: what a reader got just before it
    real_connect = sqlite3.connect
    traced: list[sqlite3.Connection] = []

    def read_beside(statement: str) -> None:
        """What a reader gets just before ``statement`` runs. It records rather than asserts: SQLite's trace
        callback swallows exceptions."""
        try:
            connection = open_readonly(db)
        except ConfigError as exc:
            seen.append("not yet" if "the gateway has not run with this storage" in str(exc) else f"{statement}: {exc}")
            return
        try:
            report = snapshot(connection, tmp_path)
            seen.append("whole" if report["rounds"] == [] and report["models"] == [] else f"{statement}: {report}")
        except sqlite3.Error as exc:
            seen.append(f"{statement}: {exc}")
        finally:
            connection.close()

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)
        if not traced:  # the gateway's main connection, which creates the schema (not the readers' own)
            traced.append(connection)
            connection.set_trace_callback(read_beside)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced_connect)  # the store and the readers share the module
    store = GatewayStore(db)
    traced[0].set_trace_callback(None)
    try:
        read_beside("after the store was created")
        # No store first, the whole store last, and never a store without all its tables in between.
        assert seen[0] == "not yet" and seen[-1] == "whole", seen
        assert set(seen) == {"not yet", "whole"}, [s for s in seen if s not in ("not yet", "whole")]
        assert seen == sorted(seen, key=("not yet", "whole").index), seen
    finally:
        store.close()


def _vm_steps(store: GatewayStore, question: Callable[[], object]) -> int:
    """How much work SQLite did for ``question``: its virtual machine's instructions, in hundreds (SQLite's
    progress handler), a count that does not depend on the machine's speed or load."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    connection = store._db  # the connection the intake's questions run on
    connection.set_progress_handler(tick, 100)
    try:
        question()
    finally:
        connection.set_progress_handler(None, 100)
    return steps


def test_the_intakes_questions_cost_the_same_however_many_refusals_are_stored(tmp_path: Path) -> None:
    """Every update's admission asks whether its id was refused before. Without an index that question read
    every refusal ever stored, so a sender of refused messages made every honest update's intake slower for as
    long as they were kept (0.7 ms an update at 10,000 refusals, 7 ms at 100,000)."""
    store = GatewayStore(tmp_path / "gateway.db")
    try:
        fresh, refused = os.urandom(16), os.urandom(16)

        def questions() -> list[int]:
            return [
                _vm_steps(store, lambda: store.known_update(fresh)),
                _vm_steps(store, lambda: store.known_update(refused)),
                _vm_steps(store, lambda: store.round_counts(3)),
            ]

        store.refuse(refused, "d0", 3, "bad signature", 100)
        few = questions()
        with store.transaction() as db:  # a flood of refused messages in the rounds after round 3
            db.executemany(INSERT_REFUSAL, ((os.urandom(16), f"d{i % 50}", 4 + i // 500, "malformed", 100, time.time())
                                            for i in range(20_000)))  # fmt: skip
        many = questions()
        assert store.known_update(refused) == "bad signature" and store.known_update(fresh) is None
        assert many[0] <= few[0] + 1 and many[1] <= few[1] + 1, (few, many)  # a scan would be thousands
        assert many[2] <= few[2] + 1, (few, many)  # round 3's one refusal, found through the index
        assert store.round_counts(3)["refused"] == 1 and store.round_counts(4)["refused"] == 500
    finally:
        store.close()


def test_a_store_opened_beside_a_gateway_in_the_middle_of_a_commit_does_not_wait_for_its_lock(tmp_path: Path) -> None:
    """``gateway status`` and the tests open the store beside a running gateway: a complete store's schema is
    read, not written, so the gateway's write lock does not hold them up (an open that took it would wait for
    SQLite's timeout and fail with "database is locked" while the gateway commits)."""
    GatewayStore(tmp_path / "gateway.db").close()
    gateway = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    gateway.execute("BEGIN IMMEDIATE")  # the running gateway, mid-commit
    try:
        beside = GatewayStore(tmp_path / "gateway.db")
        assert beside.round_counts(1)["train"] == 0
        beside.close()
    finally:
        gateway.execute("ROLLBACK")
        gateway.close()


def test_naming_a_base_by_its_prefix_costs_the_same_however_many_versions_are_stored(tmp_path: Path) -> None:
    """A compact update names its base by a 4-byte prefix; when that is neither the current version nor the open
    round's, the intake asks the store for the one stored version with that prefix. That read every version
    ever made, so a sender of compact updates with made-up prefixes cost the intake more with every round."""
    store = GatewayStore(tmp_path / "gateway.db")
    try:
        def add(versions: list[str], first: int = 0) -> None:
            with store.transaction() as db:
                db.executemany("INSERT INTO models VALUES (?, NULL, ?, 0, 'm', 'w', 1, ?)",
                               ((v, first + i, first + i) for i, v in enumerate(versions)))  # fmt: skip

        versions = [os.urandom(32).hex() for _ in range(5003)]
        add(versions[:3])
        known = versions[1]
        prefixes = (os.urandom(4).hex() for _ in range(100))
        absent = next(p for p in prefixes if not any(v.startswith(p) for v in versions))

        def questions() -> list[int]:
            return [_vm_steps(store, lambda: store.model(known[:8])), _vm_steps(store, lambda: store.model(absent))]

        few = questions()
        add(versions[3:], first=3)
        many = questions()
        assert many[0] <= few[0] + 1 and many[1] <= few[1] + 1, (few, many)  # a scan would be hundreds
        # What it answers is unchanged: the one version with the prefix, none for an unknown or ambiguous one.
        found = store.model(known[:8].upper())
        assert found is not None and found["version"] == known and found["round"] == 1
        assert store.model(absent) is None and store.model("") is None
        ambiguous = Counter(m["version"][:1] for m in store.models()).most_common(1)[0][0]
        assert store.model(ambiguous) is None
    finally:
        store.close()


def test_a_rounds_waiting_tasks_cost_the_same_however_many_tasks_earlier_rounds_left_unanswered(
    tmp_path: Path,
) -> None:
    """A task nobody answers stays 'sent' after its round closes: over-provisioning leaves some in every round,
    and a device that never answers leaves one in every round it is asked in. The open round's waiting tasks,
    asked at every death and failure report in it, were found by status and kind alone, reading every task any
    earlier round left unanswered (3.3 ms at 20,000)."""
    store = GatewayStore(tmp_path / "gateway.db")
    try:
        def tasks(round_: int, n: int) -> None:
            store.add_selections(round_, "train", [(f"d{i}", os.urandom(16)) for i in range(n)], b"\0" * 32, 0.0)

        tasks(1, 20)
        store.set_selection_status(1, "d0", "train", "delivered")

        def questions() -> list[int]:
            return [_vm_steps(store, lambda: store.waiting_devices(1, "train")),
                    _vm_steps(store, lambda: store.outstanding(1, "train"))]  # fmt: skip

        few = questions()
        for round_ in range(2, 402):  # 400 rounds later, each with 50 tasks never answered...
            tasks(round_, 50)
        store.add_selections(1, "train", [("d20", os.urandom(16))], b"\0" * 32, 0.0)  # ...and round 1 as it was
        store.set_selection_status(1, "d20", "train", "reassigned")
        many = questions()
        assert many[0] <= few[0] + 1 and many[1] <= few[1] + 1, (few, many)  # a scan would be hundreds
        assert sorted(d for _, d, _, _ in store.waiting_devices(1, "train")) == sorted(f"d{i}" for i in range(1, 20))
        assert store.outstanding(1, "train") == 20 and len(store.waiting_devices(kind="train")) == 19 + 400 * 50
    finally:
        store.close()
