"""The gateway's store opened read-only, for the readers beside a running gateway (metrics, dashboard, status).

SQLite in WAL mode lets a reader see the last committed state without blocking the writer: a reader never
takes the gateway's lock, and the round loop never waits on one (``GatewayStore`` is the only writer).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_runtime.config import ConfigError


def open_readonly(db: Path) -> sqlite3.Connection:
    """A connection that can change nothing; ``ConfigError`` naming the file when there is no store to read."""
    if not db.exists():
        raise ConfigError(f"no state at {db}: the gateway has not run with this storage")
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        connection.execute("PRAGMA query_only = ON")
        created = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'models'").fetchall()
        if created:
            connection.execute("SELECT 1 FROM models LIMIT 1")
    except sqlite3.Error as exc:
        raise ConfigError(f"{db}: cannot read the gateway's store: {exc}") from exc
    if not created:
        # The gateway has made the file and not yet committed its tables (GatewayStore creates them at once).
        connection.close()
        raise ConfigError(f"no tables yet at {db}: the gateway has not run with this storage (it may be starting)")
    return connection
