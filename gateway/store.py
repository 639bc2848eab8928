"""The gateway's durable state in SQLite (WAL): rounds, selections, updates, refusals, metrics, models, devices.

An update counts only once its row is committed (synchronous=FULL), and
the device gets its receipt only after that, so a gateway killed at any
instant has either counted an update (and will rebuild the round's
aggregate from the stored payloads on restart) or not (and the device
resends it). The update id is the primary key: nothing is counted twice.

Group commit: an fsync'd commit per update was most of the gateway's time
per message, so the intake *stages* its writes (``accept``/``refuse`` with
``batch=``): they are kept in memory, and ``commit_pending`` writes and
commits them all with one fsync on a connection of its own (the writer),
without the lock the intake takes: the MQTT thread keeps judging and
staging while the disk syncs. ``commit_batch`` commits and hands back the
items staged so far: committed, or lost when the commit failed (a full
disk). Only then does the caller fold and receipt them. Any other
``transaction`` first commits what is staged, on its own (the items wait in
``commit_batch``'s answer), so no other write ever shares, or rolls back,
an intake batch. The intake's own questions (``known_update``, ``task``,
``outstanding``, ``waiting_devices``) see what is staged or being committed
(a resend of a staged update is a duplicate; its task is delivered).
The main connection is used under a lock by the gateway's threads; the
writer only under the commit mutex. ``":memory:"`` gives a store that lives
only as long as the object (one connection), for tests of the round policy
that need no disk.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .admission import UNCOMMITTED, TaskRecord
from .privacy.accountant import LedgerEntry
from .refusal_classes import refusal_class
from .robustness.reliability import Reliability

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY, parent TEXT, round INTEGER, created REAL NOT NULL,
    path TEXT NOT NULL, master TEXT NOT NULL, size INTEGER NOT NULL, seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, base_version TEXT NOT NULL, status TEXT NOT NULL, mode TEXT NOT NULL,
    started REAL NOT NULL, deadline REAL NOT NULL, closed REAL, target INTEGER NOT NULL,
    new_version TEXT, note TEXT
);
CREATE TABLE IF NOT EXISTS selections (
    round INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, task_id BLOB NOT NULL,
    status TEXT NOT NULL, sent REAL NOT NULL, base_version TEXT NOT NULL, deadline REAL NOT NULL,
    PRIMARY KEY (round, device, kind)
);
CREATE TABLE IF NOT EXISTS updates (
    update_id BLOB PRIMARY KEY, round INTEGER NOT NULL, task_round INTEGER NOT NULL, device TEXT NOT NULL,
    kind TEXT NOT NULL, samples INTEGER NOT NULL, weight REAL NOT NULL, base_version TEXT NOT NULL,
    bytes INTEGER NOT NULL, dense_bytes INTEGER NOT NULL, received REAL NOT NULL, payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_round ON updates (round, kind);
-- A task nobody answered stays 'sent' after its round closed (over-provisioning leaves some in every round, and
-- a device that never answers one leaves one in every round it is asked in). The round's waiting tasks, asked
-- at each death or failure report in the round, were found through (status, kind) alone, reading every such
-- task of every round before (3.3 ms at 20,000): with the round in the index, only the round's own.
DROP INDEX IF EXISTS selections_waiting;
CREATE INDEX IF NOT EXISTS selections_waiting_round ON selections (status, kind, round);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, update_id BLOB, device TEXT NOT NULL, round INTEGER,
    reason TEXT NOT NULL, bytes INTEGER NOT NULL, received REAL NOT NULL
);
-- Every update's admission asks whether its id was refused before, and every round's count asks for its
-- refusals: without these, both scan every refusal ever stored, so a sender of refused messages would make
-- the intake of every honest update slower for as long as the refusals are kept (0.7 ms an update at 10,000).
CREATE INDEX IF NOT EXISTS refusals_update ON refusals (update_id) WHERE update_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS refusals_round ON refusals (round);
-- What [retention] refusals deleted, by class of reason (refusal_classes.py): the metrics' counters of refused
-- messages and bytes add these, so they never go down (Prometheus reads a decrease as a restart).
CREATE TABLE IF NOT EXISTS refusals_pruned (
    class TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    round INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (round, name)
);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, online INTEGER NOT NULL, seq INTEGER NOT NULL, last_seen REAL NOT NULL,
    capabilities BLOB, failure TEXT, failure_key TEXT
);
CREATE TABLE IF NOT EXISTS privacy_ledger (
    round INTEGER PRIMARY KEY, mode TEXT NOT NULL, population INTEGER NOT NULL, sampling_rate REAL NOT NULL,
    clip REAL NOT NULL, noise_multiplier REAL NOT NULL, update_noise REAL NOT NULL, participants INTEGER NOT NULL,
    next_clip REAL NOT NULL, recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dp_tasks (
    task_id BLOB PRIMARY KEY, device TEXT NOT NULL, round INTEGER NOT NULL, noise REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dp_tasks_device ON dp_tasks (device);
CREATE TABLE IF NOT EXISTS contributions (
    round INTEGER NOT NULL, device TEXT NOT NULL, norm REAL, cosine REAL, norm_z REAL, cosine_z REAL,
    flagged INTEGER NOT NULL, reason TEXT NOT NULL, counted INTEGER NOT NULL, chosen INTEGER, loss_change REAL,
    PRIMARY KEY (round, device)
);
CREATE TABLE IF NOT EXISTS reliability (
    device TEXT PRIMARY KEY, score REAL NOT NULL, rounds INTEGER NOT NULL, flags INTEGER NOT NULL,
    quarantined INTEGER NOT NULL, reason TEXT NOT NULL, since INTEGER NOT NULL, updated REAL NOT NULL
);
-- Who is quarantined is asked at every step of the round thread: through this, without reading every device's row.
CREATE INDEX IF NOT EXISTS reliability_quarantined ON reliability (device) WHERE quarantined = 1;
CREATE TABLE IF NOT EXISTS failures (
    report_id BLOB PRIMARY KEY, device TEXT NOT NULL, round INTEGER NOT NULL, task_id BLOB NOT NULL,
    kind TEXT NOT NULL, reason INTEGER NOT NULL, detail TEXT NOT NULL, received REAL NOT NULL
);
"""
SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", SCHEMA))
# Columns added after a store could first be created: (table, column, declaration).
MIGRATIONS = (
    ("devices", "failure", "TEXT"),
    ("devices", "failure_key", "TEXT"),
    # The federation's privacy mode, recorded with every round, and what a DP round was opened with.
    ("rounds", "privacy", "TEXT NOT NULL DEFAULT 'off'"),
    ("rounds", "population", "INTEGER NOT NULL DEFAULT 0"),
    ("rounds", "clip", "REAL NOT NULL DEFAULT 0"),
    ("rounds", "noise", "REAL NOT NULL DEFAULT 0"),
    ("rounds", "sampling_rate", "REAL NOT NULL DEFAULT 0"),
    # Whether the round's training tasks asked for reports (NULL in older stores: the report_every schedule did).
    ("rounds", "report", "INTEGER"),
)


PRESENCE = object()  # the batch item of a staged device row: nothing waits on its commit
ACCEPTED = "accepted"
INSERT_UPDATE = "INSERT INTO updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
DELIVERED = "UPDATE selections SET status = 'delivered' WHERE round = ? AND device = ? AND kind = ?"
INSERT_REFUSAL = "INSERT INTO refusals (update_id, device, round, reason, bytes, received) VALUES (?, ?, ?, ?, ?, ?)"
SAVE_DEVICE = "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, ?)"
# Where a refusal's line not logged one by one is kept (edge_runtime/lograte.py's summary line says it).
STORE_KEEPS = "the store records each, up to [retention] refusals: tinyfed gateway status"


@dataclass
class Staged:
    """One message's writes, staged: what the writer executes, and what the intake's questions see meanwhile."""

    statements: list[tuple[str, tuple[Any, ...]]]
    update_id: bytes | None = None  # the id the staged row answers ``known_update`` for
    delivers: tuple[int, str, str] | None = None  # the task (round, device, kind) it delivers
    unique_first: bool = False  # the first statement inserts a primary key: if it is known, nothing else is done
    on_duplicate: Callable[[], None] | None = None
    item: object = None
    seq: int = 0  # its number in staging order (GatewayStore._stage)

    def apply(self, db: sqlite3.Connection) -> None:
        statements = iter(self.statements)
        if self.unique_first:
            sql, args = next(statements)
            try:
                db.execute(sql, args)
            except sqlite3.IntegrityError:  # the first statement changed nothing: the transaction goes on
                if self.on_duplicate is not None:
                    self.on_duplicate()
                return
        for sql, args in statements:
            db.execute(sql, args)


@dataclass
class RoundRow:
    round: int
    base_version: bytes
    status: str  # open | closed | failed
    mode: str  # sync | async
    started: float
    deadline: float
    target: int
    closed: float | None = None
    new_version: bytes | None = None
    note: str | None = None
    privacy: str = "off"  # the federation's [privacy] mode when the round opened
    population: int = 0  # DP: eligible devices when it opened (q x population devices are expected)
    clip: float = 0.0  # DP: the L2 bound its tasks carried
    noise: float = 0.0  # DP: the noise multiplier accounted for it (local-dp: the one its tasks carried)
    sampling_rate: float = 0.0  # central-dp: the q its devices were sampled with
    report: bool | None = None  # its training tasks ask for reports (None: a row from before this was kept)


@dataclass
class Contribution:
    """How one training update of a closed round was judged (robustness/): its scores, and whether it counted."""

    device: str
    norm: float | None = None
    cosine: float | None = None
    norm_z: float | None = None
    cosine_z: float | None = None
    flagged: bool = False
    reason: str = ""
    counted: bool = True
    chosen: bool | None = None  # Krum and Multi-Krum: whether the strategy picked it (None: not a picking one)
    loss_change: float | None = None  # on the hub's validation set ([robustness] validation)


@dataclass
class StoredUpdate:
    update_id: bytes
    device: str
    kind: str
    weight: float
    payload: bytes
    samples: int = 0  # the sample count it was weighed by (its claim, bounded)


class GatewayStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self._private(self.path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._create_schema()
        self._lock = threading.RLock()  # the main connection and the staged state below
        # Held while the writer commits a batch, and by every other transaction (which commits the batch first):
        # the two connections never contend for SQLite's write lock. Taken before ``_lock``, never after it.
        self._commit_mutex = threading.RLock()
        self._writer = self._db
        if str(path) != ":memory:":
            self._writer = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=60.0)
            self._writer.execute("PRAGMA synchronous=FULL")
        self._staged: list[Staged] = []  # the open batch, in the order it was staged
        self.batch_limit: int | None = None  # messages per commit at most ([gateway] commit_batch); None: all
        self._seq = 0  # the last staged message's number; what the intake sees of it carries it
        self._seen_ids: dict[bytes, list[tuple[int, str]]] = {}  # update id -> (staged, ACCEPTED or refusal reason)
        self._delivered: dict[tuple[int, str, str], list[int]] = {}  # (round, device, kind) -> staged delivering
        self._committed: list[object] = []  # items whose batch committed, not yet handed back
        self._lost: list[object] = []  # items whose batch failed to commit, not yet handed back
        self._in_flight = 0  # items being committed now
        self.batch_error: BaseException | None = None  # why the last lost batch was lost
        self.stage_presence = False  # save_device stages into the open batch instead of committing at once
        self.commits = 0  # transactions committed (each one fsync): what a flood of messages costs the disk
        self._closed = False

    def _schema_complete(self) -> bool:
        """Every table, index and later column there already: the usual case, read without SQLite's write lock
        (a store opened beside a running gateway, by ``gateway status`` or a test, must not wait for its commits)."""
        names = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if not SCHEMA_NAMES.issubset(names):
            return False
        return all(
            column in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for table, column, _ in MIGRATIONS
        )

    def _create_schema(self) -> None:
        """The tables and later columns in one transaction: a reader beside a gateway that is creating its store
        (``gateway status``, the dashboard) sees either no tables or all of them, never a store in between."""
        if self._schema_complete():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in re.sub(r"--[^\n]*", "", SCHEMA).split(";"):  # comments may hold a semicolon
                if statement.strip():
                    self._db.execute(statement)
            for table, column, declaration in MIGRATIONS:
                if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing. A COMMIT that fails (a full disk) leaves SQLite's transaction open, and the next
        statement would read and extend its uncommitted rows: it is rolled back like any other failure.
        What is staged is committed first, on its own."""
        with self._commit_mutex:
            self._commit_staged()
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                    self.commits += 1
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._commit_mutex:
            if self._closed:  # a stop after a stop has nothing to commit
                return
            self._commit_staged()  # committed, never receipted: their devices resend them and they count once
            with self._lock:
                if self._writer is not self._db:
                    self._writer.close()
                self._db.close()
                self._closed = True

    def vacuum(self) -> None:
        """Rewrite the file without its unused space ([retention] vacuum_mb): the writers wait meanwhile."""
        with self._commit_mutex:
            self._commit_staged()
            with self._lock:
                self._db.execute("VACUUM")

    # -- group commit -------------------------------------------------------------------------------------
    def _stage(self, item: object, rows: Staged) -> int:
        """Add one message's writes to the open batch (under the lock); ``item`` comes back from
        ``commit_batch`` with the batch's fate. Returns the number that tags what the intake sees of it."""
        self._seq += 1
        rows.item, rows.seq = item, self._seq
        self._staged.append(rows)
        return self._seq

    def commit_pending(self) -> None:
        """Commit the open batch (one fsync) on the writer, or lose it whole when the commit fails. Staging goes
        on meanwhile: the lock the intake takes is held only to take the batch and to record its fate."""
        with self._commit_mutex:
            self._commit_staged()

    def _commit_staged(self) -> None:
        """``commit_pending`` under the commit mutex: what is staged now, ``batch_limit`` messages per commit."""
        with self._lock:
            left = len(self._staged)
        while left > 0 and not self._closed:
            with self._lock:
                limit = min(left, self.batch_limit or left)
                batch, self._staged = self._staged[:limit], self._staged[limit:]
                self._in_flight = len(batch)
            left -= len(batch)
            if self._writer is self._db:  # one connection (":memory:"): it is the lock's
                with self._lock:
                    error = self._write_batch(batch)
            else:
                error = self._write_batch(batch)
            with self._lock:
                for rows in batch:  # committed (the rows are on disk for every reader) or lost: no longer staged
                    if rows.update_id is not None:
                        self._forget(self._seen_ids, rows.update_id, rows.seq)
                    if rows.delivers is not None:
                        self._forget(self._delivered, rows.delivers, rows.seq)
                items = [rows.item for rows in batch]
                self._in_flight = 0
                if error is None:
                    self._committed.extend(items)
                else:
                    self._lost.extend(items)
                    self.batch_error = error

    @staticmethod
    def _forget(seen: dict[Any, list[Any]], key: Any, seq: int) -> None:
        entries = [e for e in seen.get(key, ()) if (e[0] if isinstance(e, tuple) else e) != seq]
        if entries:
            seen[key] = entries
        else:
            seen.pop(key, None)

    def _write_batch(self, batch: list[Staged]) -> BaseException | None:
        """One transaction on the writer for the whole batch; None when it committed, else why it did not."""
        db = self._writer
        try:
            db.execute("BEGIN IMMEDIATE")
            for rows in batch:
                rows.apply(db)
            db.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except Exception as rollback:  # a disk that failed the commit may fail this too: still lost, said
                exc.add_note(f"and its ROLLBACK failed: {rollback}")
            return exc
        return None

    def commit_batch(self) -> tuple[Sequence[object], Sequence[object]]:
        """Commit the open batch; (committed, lost): every item staged since the last call, by its batch's fate
        (a batch another ``transaction`` or ``commit_pending`` committed first is among them)."""
        with self._commit_mutex:
            self._commit_staged()
            return self.take_settled()

    def take_settled(self) -> tuple[Sequence[object], Sequence[object]]:
        """(committed, lost) since the last call, committing nothing more."""
        with self._lock:
            done, lost = self._committed, self._lost
            self._committed, self._lost = [], []
            return done, lost

    @property
    def staged(self) -> int:
        """Items in the open batch, not yet being committed."""
        return len(self._staged)

    @property
    def unsettled(self) -> int:
        """Items staged, being committed, or committed and not yet handed back."""
        with self._lock:
            return len(self._staged) + self._in_flight + len(self._committed) + len(self._lost)

    # -- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- models -------------------------------------------------------------------------------------------
    def add_model(
        self, version: bytes, parent: bytes | None, round_: int | None, path: Path, master: Path, size: int
    ) -> None:
        with self.transaction() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM models").fetchone()[0]
            db.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.hex(),
                    parent.hex() if parent else None,
                    round_,
                    time.time(),
                    str(path),
                    str(master),
                    size,
                    seq,
                ),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (version.hex(),))

    _MODEL_KEYS = ("version", "parent", "round", "created", "path", "master", "size", "seq")

    def models(self) -> list[dict[str, Any]]:
        rows = self._query(f"SELECT {', '.join(self._MODEL_KEYS)} FROM models ORDER BY seq")
        return [dict(zip(self._MODEL_KEYS, r, strict=True)) for r in rows]

    def finish_round(
        self,
        round_: int,
        version: bytes,
        parent: bytes,
        path: Path,
        master: Path,
        size: int,
        metrics: dict[str, float],
        ledger: LedgerEntry | None = None,
        contributions: list[Contribution] | None = None,
        reliabilities: list[Reliability] | None = None,
    ) -> None:
        """Close a round and make its model current in one transaction: a crash leaves both or neither.

        A DP round's privacy event goes into the ledger in the same transaction: spent budget is never lost
        (a version published without its entry) nor counted twice (the round is its primary key). So do the
        anomaly detector's scores of the round's updates and the devices' reliabilities they changed."""
        with self.transaction() as db:
            self._write_robustness(db, round_, contributions or [], reliabilities or [])
            if ledger is not None:
                db.execute(
                    "INSERT INTO privacy_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ledger.round, ledger.mode, ledger.population, ledger.sampling_rate, ledger.clip,
                     ledger.noise_multiplier, ledger.update_noise, ledger.participants, ledger.next_clip,
                     time.time()),
                )  # fmt: skip
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM models").fetchone()[0]
            db.execute(
                "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (version.hex(), parent.hex(), round_, time.time(), str(path), str(master), size, seq),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (version.hex(),))
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)", [(round_, k, float(v)) for k, v in metrics.items()]
            )
            db.execute(
                "UPDATE rounds SET status = 'closed', closed = ?, new_version = ? WHERE round = ?",
                (time.time(), version.hex(), round_),
            )

    def model(self, version_prefix: str) -> dict[str, Any] | None:
        """The one version that starts with ``version_prefix``; None when none or several do. A range of the
        primary key, two rows at most: a compact update names its base by a 4-byte prefix, so this is asked for
        every update whose base is neither the current version nor the open round's, and reading every version
        made a sender of such updates cost the intake more with every round the federation had run."""
        prefix = version_prefix.lower()
        rows = self._query(
            f"SELECT {', '.join(self._MODEL_KEYS)} FROM models WHERE version >= ? AND version < ? ORDER BY version "
            "LIMIT 2",
            (prefix, prefix + "\U0010ffff"),  # above every character a version (hex) can continue the prefix with
        )
        return dict(zip(self._MODEL_KEYS, rows[0], strict=True)) if len(rows) == 1 else None

    def model_seq(self, version: bytes) -> int | None:
        rows = self._query("SELECT seq FROM models WHERE version = ?", (version.hex(),))
        return int(rows[0][0]) if rows else None

    @property
    def current_version(self) -> bytes | None:
        value = self.get_meta("current_version")
        return bytes.fromhex(value) if value else None

    # -- rounds -------------------------------------------------------------------------------------------
    def _round(self, r: tuple[Any, ...]) -> RoundRow:
        return RoundRow(
            r[0], bytes.fromhex(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], bytes.fromhex(r[8]) if r[8] else None, r[9],
            r[10], r[11], r[12], r[13], r[14], None if r[15] is None else bool(r[15]),
        )  # fmt: skip

    _ROUND_COLUMNS = (
        "round, base_version, status, mode, started, deadline, target, closed, new_version, note, privacy, "
        "population, clip, noise, sampling_rate, report"
    )

    def rounds(self, limit: int = 1000) -> list[RoundRow]:
        rows = self._query(f"SELECT {self._ROUND_COLUMNS} FROM rounds ORDER BY round DESC LIMIT ?", (limit,))
        return [self._round(r) for r in reversed(rows)]

    def round_row(self, round_: int) -> RoundRow | None:
        rows = self._query(f"SELECT {self._ROUND_COLUMNS} FROM rounds WHERE round = ?", (round_,))
        return self._round(rows[0]) if rows else None

    def open_round_row(self) -> RoundRow | None:
        rows = self.open_round_rows()
        return rows[-1] if rows else None

    def open_round_rows(self) -> list[RoundRow]:
        """Every round still open, oldest first: more than one only after a crash while an async buffer closed."""
        rows = self._query(f"SELECT {self._ROUND_COLUMNS} FROM rounds WHERE status = 'open' ORDER BY round")
        return [self._round(r) for r in rows]

    def closed_training_rounds(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM rounds WHERE status = 'closed' AND mode != 'eval'")[0][0])

    def evaluated(self, version: bytes) -> bool:
        """Whether an evaluation of this version was opened (it is asked once, whatever its reports)."""
        return bool(self._query("SELECT 1 FROM rounds WHERE mode = 'eval' AND base_version = ?", (version.hex(),)))

    def last_round(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(round), 0) FROM rounds")[0][0])

    def end_round(self, round_: int, status: str, new_version: bytes | None = None, note: str = "") -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE rounds SET status = ?, closed = ?, new_version = ?, note = ? WHERE round = ?",
                (status, time.time(), new_version.hex() if new_version else None, note, round_),
            )

    # -- selections ---------------------------------------------------------------------------------------
    def add_selections(
        self, round_: int, kind: str, tasks: list[tuple[str, bytes]], base: bytes, deadline: float
    ) -> None:
        """Record a round's tasks (device, task id) in one transaction: one fsync for 1,000 devices, not 1,000."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO selections VALUES (?, ?, ?, ?, 'sent', ?, ?, ?)",
                [(round_, device, kind, task_id, now, base.hex(), deadline) for device, task_id in tasks],
            )

    def record_plan(
        self,
        opening: RoundRow | None,
        round_: int,
        kind: str,
        tasks: list[tuple[str, bytes]],
        base: bytes,
        deadline: float,
        ended: list[tuple[int, str, str, str]],
        local_noise: float = 0.0,
    ) -> None:
        """One step of the round policy in one transaction, before any of its tasks is sent: the round it
        opens, its tasks (device, task id), and tasks it ends ((round, device, kind, new status)).
        ``local_noise``: the tasks are local-DP training tasks with this noise multiplier; each is counted
        against its device's budget (``dp_tasks``) in the same transaction."""
        now = time.time()
        with self.transaction() as db:
            if opening is not None:
                db.execute(
                    "INSERT INTO rounds (round, base_version, status, mode, started, deadline, target, privacy, "
                    "population, clip, noise, sampling_rate, report) "
                    "VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (opening.round, opening.base_version.hex(), opening.mode, opening.started, opening.deadline,
                     opening.target, opening.privacy, opening.population, opening.clip, opening.noise,
                     opening.sampling_rate, None if opening.report is None else int(opening.report)),
                )  # fmt: skip
            db.executemany(
                "UPDATE selections SET status = ? WHERE round = ? AND device = ? AND kind = ?",
                [(status, r, device, k) for r, device, k, status in ended],
            )
            db.executemany(
                "INSERT OR REPLACE INTO selections VALUES (?, ?, ?, ?, 'sent', ?, ?, ?)",
                [(round_, device, kind, task_id, now, base.hex(), deadline) for device, task_id in tasks],
            )
            if local_noise and kind == "train":
                db.executemany(
                    "INSERT OR IGNORE INTO dp_tasks VALUES (?, ?, ?, ?)",
                    [(task_id, device, round_, local_noise) for device, task_id in tasks],
                )

    def extend_deadlines(self, round_: int | None, seconds: float) -> None:
        """Move a round's deadline, and the deadlines of every task still waiting, ``seconds`` later."""
        with self.transaction() as db:
            if round_ is not None:
                db.execute("UPDATE rounds SET deadline = deadline + ? WHERE round = ?", (seconds, round_))
            db.execute("UPDATE selections SET deadline = deadline + ? WHERE status = 'sent'", (seconds,))

    def set_selection_status(self, round_: int, device: str, kind: str, status: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE selections SET status = ? WHERE round = ? AND device = ? AND kind = ?",
                (status, round_, device, kind),
            )

    def task(self, round_: int, device: str, kind: str) -> TaskRecord | None:
        """One device's task in a round (a primary-key lookup: judging an update must not scan the round)."""
        with self._lock:  # the row and what is staged, seen at one moment (a commit moves one to the other)
            rows = self._query(
                "SELECT status, base_version, task_id FROM selections WHERE round = ? AND device = ? AND kind = ?",
                (round_, device, kind),
            )
            if not rows:
                return None
            status = "delivered" if (round_, device, kind) in self._delivered else str(rows[0][0])
        return TaskRecord(status, bytes.fromhex(rows[0][1]), bytes(rows[0][2]))

    def outstanding(self, round_: int, kind: str) -> int:
        """Tasks of a round that may still be answered: sent, or reassigned while their device looked dead."""
        with self._lock:  # staged deliveries are answers already
            if not self._delivered:
                count = ("SELECT COUNT(*) FROM selections WHERE round = ? AND kind = ? "
                         "AND status IN ('sent', 'reassigned')")
                return int(self._query(count, (round_, kind))[0][0])
            rows = self._query(
                "SELECT device FROM selections WHERE round = ? AND kind = ? AND status IN ('sent', 'reassigned')",
                (round_, kind),
            )
            return sum(1 for (device,) in rows if (round_, device, kind) not in self._delivered)

    def round_tasks(self, round_: int, kind: str) -> dict[str, str]:
        """Every device given a task of this kind in this round, with the task's status."""
        rows = self._query("SELECT device, status FROM selections WHERE round = ? AND kind = ?", (round_, kind))
        return {str(d): str(s) for d, s in rows}

    def failed_devices(self, round_: int, kind: str) -> list[str]:
        rows = self._query(
            "SELECT device FROM selections WHERE round = ? AND kind = ? AND status = 'failed' ORDER BY device",
            (round_, kind),
        )
        return [str(r[0]) for r in rows]

    def waiting_devices(self, round_: int | None = None, kind: str | None = None) -> list[tuple[int, str, str, float]]:
        """(round, device, kind, deadline) of every task sent and not yet answered."""
        sql = "SELECT round, device, kind, deadline FROM selections WHERE status = 'sent'"
        args: list[Any] = []
        if round_ is not None:
            sql += " AND round = ?"
            args.append(round_)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        with self._lock:  # staged deliveries are answered
            return [(int(r), str(d), str(k), float(t)) for r, d, k, t in self._query(sql, tuple(args))
                    if (r, d, k) not in self._delivered]  # fmt: skip

    def selections(self, round_: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT round, device, kind, task_id, status, sent, base_version, deadline FROM selections WHERE 1=1"
        args: list[Any] = []
        if round_ is not None:
            sql += " AND round = ?"
            args.append(round_)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        keys = ("round", "device", "kind", "task_id", "status", "sent", "base_version", "deadline")
        return [dict(zip(keys, r, strict=True)) for r in self._query(sql, tuple(args))]

    # -- updates ------------------------------------------------------------------------------------------
    def accept(
        self,
        update_id: bytes,
        round_: int,
        task_round: int,
        device: str,
        kind: str,
        samples: int,
        weight: float,
        base: bytes,
        nbytes: int,
        dense_bytes: int,
        payload: bytes,
        batch: object = None,
        on_duplicate: Callable[[], None] | None = None,
    ) -> bool:
        """Record an accepted update; False when its id is already known (counted before). With ``batch``
        (any object but None) it is staged, and ``batch`` comes back from ``commit_batch``; an id that turns out
        known only when its batch is written (nothing the intake asked showed it) calls ``on_duplicate`` then."""
        row = (update_id, round_, task_round, device, kind, samples, weight, base.hex(), nbytes, dense_bytes,
               time.time(), payload)  # fmt: skip
        delivered = (task_round, device, kind)
        if batch is not None:
            with self._lock:
                if any(reason == ACCEPTED for _, reason in self._seen_ids.get(update_id, ())):
                    return False
                staged = Staged([(INSERT_UPDATE, row), (DELIVERED, delivered)], update_id, delivers=delivered,
                                unique_first=True, on_duplicate=on_duplicate)  # fmt: skip
                seq = self._stage(batch, staged)
                self._seen_ids.setdefault(update_id, []).append((seq, ACCEPTED))
                self._delivered.setdefault(delivered, []).append(seq)
            return True
        with self.transaction() as db:
            try:
                db.execute(INSERT_UPDATE, row)
            except sqlite3.IntegrityError:
                return False
            db.execute(DELIVERED, delivered)
        return True

    def known_update(self, update_id: bytes) -> str | None:
        """'accepted' (committed), ``UNCOMMITTED`` (accepted, its commit pending), the reason of an earlier refusal
        (staged ones included), or None for a new id."""
        with self._lock:  # the rows and what is staged, seen at one moment (a commit moves one to the other)
            rows = self._db.execute(
                "SELECT 1, NULL FROM updates WHERE update_id = ?1 UNION ALL "
                "SELECT * FROM (SELECT 0, reason FROM refusals WHERE update_id = ?1 ORDER BY id LIMIT 1)",
                (update_id,),
            ).fetchall()
            staged = [reason for _, reason in self._seen_ids.get(update_id, ())]
        if any(accepted for accepted, _ in rows):
            return ACCEPTED
        if ACCEPTED in staged:  # not durable yet: its fate is its commit's (admission: Outcome.IN_FLIGHT)
            return UNCOMMITTED
        refused = [str(reason) for _, reason in rows] + staged  # the first refusal, on disk before staged
        return refused[0] if refused else None

    def refuse(
        self, update_id: bytes | None, device: str, round_: int | None, reason: str, nbytes: int, batch: object = None
    ) -> None:
        """Record a refused message (``batch``: staged, as in ``accept``)."""
        row = (update_id, device, round_, reason, nbytes, time.time())
        if batch is not None:
            with self._lock:
                seq = self._stage(batch, Staged([(INSERT_REFUSAL, row)], update_id))
                if update_id is not None:
                    self._seen_ids.setdefault(update_id, []).append((seq, reason))
            return
        with self.transaction() as db:
            db.execute(INSERT_REFUSAL, row)

    def prune_refusals(self, keep: int) -> int:
        """Delete all but the latest ``keep`` refusals ([retention] refusals); how many went. Refusal ids only
        grow (AUTOINCREMENT), so the latest are the ``keep`` highest: a read of the lowest and highest id, both
        through the primary key, says whether there is anything to do, and nothing is written (nor the group
        commit's open batch hurried) until a tenth more than ``keep`` may be stored."""
        low, high = self._query("SELECT MIN(id), MAX(id) FROM refusals")[0]
        if not keep or high is None or high - low + 1 <= keep + max(1, keep // 10):
            return 0
        with self.transaction() as db:
            totals: dict[str, list[int]] = {}
            for reason, n, nbytes in db.execute(
                "SELECT reason, COUNT(*), COALESCE(SUM(bytes), 0) FROM refusals WHERE id <= ? GROUP BY reason",
                (high - keep,),
            ):
                total = totals.setdefault(refusal_class(str(reason)), [0, 0])
                total[0] += int(n)
                total[1] += int(nbytes)
            db.executemany(
                "INSERT INTO refusals_pruned VALUES (?, ?, ?) ON CONFLICT (class) DO UPDATE SET "
                "count = count + excluded.count, bytes = bytes + excluded.bytes",
                [(name, n, nbytes) for name, (n, nbytes) in totals.items()],
            )
            return int(db.execute("DELETE FROM refusals WHERE id <= ?", (high - keep,)).rowcount)

    def refusals(self, round_: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT update_id, device, round, reason, bytes FROM refusals"
        args: tuple[Any, ...] = ()
        if round_ is not None:
            sql += " WHERE round = ?"
            args = (round_,)
        keys = ("update_id", "device", "round", "reason", "bytes")
        return [dict(zip(keys, r, strict=True)) for r in self._query(sql + " ORDER BY id", args)]

    def round_updates(self, round_: int, kind: str | None = None) -> list[StoredUpdate]:
        sql = "SELECT update_id, device, kind, weight, payload, samples FROM updates WHERE round = ?"
        args: tuple[Any, ...] = (round_,)
        if kind is not None:
            sql += " AND kind = ?"
            args += (kind,)
        return [StoredUpdate(*r) for r in self._query(sql + " ORDER BY received", args)]

    def round_counts(self, round_: int) -> dict[str, int]:
        rows = self._query(
            "SELECT kind, COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(dense_bytes), 0) FROM updates "
            "WHERE round = ? GROUP BY kind",
            (round_,),
        )
        out = {"train": 0, "eval": 0, "uplink_bytes": 0, "dense_bytes": 0}
        for kind, n, nbytes, dense in rows:
            out[kind] = n
            out["uplink_bytes"] += nbytes
            out["dense_bytes"] += dense
        out["refused"] = int(self._query("SELECT COUNT(*) FROM refusals WHERE round = ?", (round_,))[0][0])
        return out

    def total_bytes(self) -> tuple[int, int]:
        row = self._query("SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(dense_bytes), 0) FROM updates")[0]
        return int(row[0]), int(row[1])

    # -- metrics ------------------------------------------------------------------------------------------
    def set_metrics(self, round_: int, values: dict[str, float]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)", [(round_, k, float(v)) for k, v in values.items()]
            )

    def metrics(self, round_: int) -> dict[str, float]:
        return {k: v for k, v in self._query("SELECT name, value FROM metrics WHERE round = ?", (round_,))}

    # -- privacy ledger -----------------------------------------------------------------------------------
    def ledger(self) -> list[LedgerEntry]:
        """Every round's privacy event, oldest first."""
        rows = self._query(
            "SELECT round, mode, population, sampling_rate, clip, noise_multiplier, update_noise, participants, "
            "next_clip, recorded FROM privacy_ledger ORDER BY round"
        )
        return [LedgerEntry(*r) for r in rows]

    def local_participations(self) -> dict[str, Counter[float]]:
        """local-dp: per device, how many training tasks it was given at each noise multiplier (a task counts
        whether or not its update arrived, and in open and failed rounds too: the conservative count; an
        asynchronous round may give one device several, which its selection row does not keep)."""
        rows = self._query("SELECT device, noise, COUNT(*) FROM dp_tasks GROUP BY device, noise")
        out: dict[str, Counter[float]] = {}
        for device, z, n in rows:
            out.setdefault(str(device), Counter())[float(z)] += int(n)
        return out

    # -- robustness: contributions and reliability (robustness/) ------------------------------------------
    @staticmethod
    def _write_robustness(
        db: sqlite3.Connection, round_: int, contributions: list[Contribution], reliabilities: list[Reliability]
    ) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO contributions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(round_, c.device, c.norm, c.cosine, c.norm_z, c.cosine_z, int(c.flagged), c.reason, int(c.counted),
              None if c.chosen is None else int(c.chosen), c.loss_change) for c in contributions],
        )  # fmt: skip
        now = time.time()
        db.executemany(
            "INSERT OR REPLACE INTO reliability VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.device, r.score, r.rounds, r.flags, int(r.quarantined), r.reason, r.since, now) for r in reliabilities],
        )

    def contributions(
        self, round_: int | None = None, flagged: bool = False, limit: int = 1000
    ) -> list[tuple[int, Contribution]]:
        """(round, how an update was judged), newest rounds first: of one round, or only the flagged or uncounted."""
        sql = ("SELECT round, device, norm, cosine, norm_z, cosine_z, flagged, reason, counted, chosen, loss_change "
               "FROM contributions WHERE 1=1")  # fmt: skip
        args: list[Any] = []
        if round_ is not None:
            sql += " AND round = ?"
            args.append(round_)
        if flagged:
            sql += " AND (flagged = 1 OR counted = 0)"
        rows = self._query(sql + " ORDER BY round DESC, device LIMIT ?", (*args, limit))
        return [(int(r[0]), Contribution(r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], bool(r[8]),
                                         None if r[9] is None else bool(r[9]), r[10])) for r in rows]  # fmt: skip

    def reliabilities(self) -> list[Reliability]:
        rows = self._query("SELECT device, score, rounds, flags, quarantined, reason, since FROM reliability "
                           "ORDER BY device")  # fmt: skip
        return [Reliability(r[0], float(r[1]), int(r[2]), int(r[3]), bool(r[4]), str(r[5]), int(r[6])) for r in rows]

    def quarantined(self) -> dict[str, str]:
        """Quarantined devices and why (read at every step, so a release by command takes effect at once)."""
        return {str(d): str(r) for d, r in self._query("SELECT device, reason FROM reliability WHERE quarantined = 1")}

    def save_reliability(self, reliability: Reliability) -> None:
        with self.transaction() as db:
            self._write_robustness(db, 0, [], [reliability])

    # -- task failures ------------------------------------------------------------------------------------
    def known_failure(self, report_id: bytes) -> bool:
        return bool(self._query("SELECT 1 FROM failures WHERE report_id = ?", (report_id,)))

    def record_failure(
        self,
        report_id: bytes,
        device: str,
        round_: int,
        task_id: bytes,
        kind: str,
        reason: int,
        detail: str,
        failure: str,
        failure_key: str,
    ) -> None:
        """A device's failed task, its task ended, and the device marked, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (report_id, device, round_, task_id, kind, reason, detail, time.time()),
            )
            db.execute(
                "UPDATE selections SET status = 'failed' WHERE round = ? AND device = ? AND kind = ?",
                (round_, device, kind),
            )
            db.execute(
                "UPDATE devices SET failure = ?, failure_key = ? WHERE device = ?", (failure, failure_key, device)
            )

    def failures(self, limit: int = 1000) -> list[dict[str, Any]]:
        keys = ("device", "round", "kind", "reason", "detail", "received")
        rows = self._query(f"SELECT {', '.join(keys)} FROM failures ORDER BY received DESC LIMIT ?", (limit,))
        return [dict(zip(keys, r, strict=True)) for r in reversed(rows)]

    # -- devices ------------------------------------------------------------------------------------------
    def save_device(
        self,
        device: str,
        online: bool,
        seq: int,
        capabilities: bytes | None,
        failure: str | None = None,
        failure_key: str | None = None,
    ) -> None:
        # A birth is retained on the broker, so a row lost with an uncommitted batch comes back at the next start:
        # with stage_presence (the service's) it rides in the intake's next group commit.
        row = (device, int(online), seq, time.time(), capabilities, failure, failure_key)
        if self.stage_presence:
            with self._lock:
                self._stage(PRESENCE, Staged([(SAVE_DEVICE, row)]))
            return
        with self.transaction() as db:
            db.execute(SAVE_DEVICE, row)

    @staticmethod
    def _private(path: Path) -> None:
        """The store is the gateway's alone: it holds every raw update and the secret that seeds each DP round's
        noise (whoever reads it can subtract the noise from the published models). Its folder is created 0700
        and the database 0600 before SQLite opens it, so the -wal and -shm files SQLite makes beside it take
        the same mode; an existing store is narrowed to that at every start."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists():
                os.chmod(file, 0o600)

    def expel_device(self, device: str, why: str, key: str) -> None:
        """Offline and left out with ``why``, keeping its capabilities and last seen (what status shows)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE devices SET online = 0, failure = ?, failure_key = ? WHERE device = ?", (why, key, device)
            )

    def devices(self) -> list[dict[str, Any]]:
        keys = ("device", "online", "seq", "last_seen", "capabilities", "failure", "failure_key")
        return [
            dict(zip(keys, r, strict=True))
            for r in self._query(f"SELECT {', '.join(keys)} FROM devices ORDER BY device")
        ]
