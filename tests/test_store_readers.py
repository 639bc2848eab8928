"""A reader beside a gateway that is creating its store (``gateway status``, the dashboard, the metrics page).

CI once caught ``gateway status --json`` between two of the store's CREATE TABLE statements: the file and
``models`` were there, ``privacy_ledger`` was not, and status died with "no such table". The test below reads
the store through the readers' own code at every statement the gateway runs while creating it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import ConfigError
from gateway.readonly import open_readonly
from gateway.report import snapshot
from gateway.store import GatewayStore


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
