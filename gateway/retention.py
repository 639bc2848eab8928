"""``[retention]``: what the store keeps as rounds go by, so a hub left running for months does not fill its disk.

Model versions: the last ``models`` (by when they were made) are kept with their files (.tflite, master
weights, strategy state); older ones are deleted, rows and files, except the current version, a version
``gateway rollback`` made current (meta ``rolled_back_to``) and, in async mode, the ``max_staleness`` + 1
latest, whose sequence numbers judge a late update's staleness. Updates: the payloads of the updates of
rounds older than the last ``updates`` rounds are dropped (emptied), never an open round's (a restart
rebuilds its aggregate from them); their rows stay, so counts and bytes per round still add up in
``gateway status``, the metrics and the dashboard.

An emptied payload leaves unused space inside its pages, and new updates are appended after them (rows go in
rowid order), so the file does not shrink by itself: ``vacuum_mb`` rewrites it (SQLite's VACUUM, the gateway's
writers waiting meanwhile) once that many MB of payloads were emptied since the last time.

Refused messages: the latest ``refusals`` (100,000 by default, unlike the rest) are kept. Hostile senders make
them, each a row, so unbounded they were a way to fill the hub's disk. A resend of a refused message whose
record went is judged again, as on its first arrival: admission depends on the message and the round it names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import GatewayConfig
from .publisher import VersionFiles
from .store import GatewayStore

log = logging.getLogger(__name__)
ROLLED_BACK_TO = "rolled_back_to"
EMPTIED = "retention_emptied_bytes"  # payload bytes emptied since the last VACUUM


@dataclass
class Pruned:
    models: int = 0  # versions deleted
    files_bytes: int = 0  # bytes of their files
    payloads: int = 0  # update payloads dropped
    payload_bytes: int = 0
    vacuumed: bool = False  # the store was rewritten without its unused space
    refusals: int = 0  # refused messages' rows deleted


def prune(store: GatewayStore, config: GatewayConfig) -> Pruned:
    """Apply ``[retention]`` once (after each round closes); 0 keeps everything."""
    keep = config.retention
    out = Pruned()
    if keep.models:
        out = _prune_models(store, config, out)
    if keep.updates:
        last = store.last_round()
        cutoff = last - keep.updates  # rounds up to this one lose their payloads
        if cutoff > 0:
            with store.transaction() as db:
                n, size = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM updates WHERE round <= ? AND "
                    "LENGTH(payload) > 0 AND round NOT IN (SELECT round FROM rounds WHERE status = 'open')",
                    (cutoff,),
                ).fetchone()
                db.execute(
                    "UPDATE updates SET payload = X'' WHERE round <= ? AND LENGTH(payload) > 0 AND round NOT IN "
                    "(SELECT round FROM rounds WHERE status = 'open')",
                    (cutoff,),
                )
            out.payloads, out.payload_bytes = int(n), int(size)
        if keep.vacuum_mb and out.payload_bytes:
            emptied = int(store.get_meta(EMPTIED) or 0) + out.payload_bytes
            if emptied >= keep.vacuum_mb * 1e6:
                store.vacuum()
                out.vacuumed = True
                emptied = 0
            store.set_meta(EMPTIED, str(emptied))
    out.refusals = prune_refusals(store, config)
    if out.models or out.payloads:
        log.info("retention: deleted %d model version(s) (%d bytes of files), emptied %d update payload(s) "
                 "(%d bytes)%s", out.models, out.files_bytes, out.payloads, out.payload_bytes,
                 "; the store was vacuumed" if out.vacuumed else "")  # fmt: skip
    return out


def prune_refusals(store: GatewayStore, config: GatewayConfig) -> int:
    """``[retention] refusals``: run after each round and by the round thread between rounds, since a flood of
    refused messages does not wait for a round to close. Nearly free while there is nothing to delete."""
    deleted = store.prune_refusals(config.retention.refusals)
    if deleted:
        log.info("retention: deleted the %d oldest refused messages' records (the latest %d are kept)", deleted,
                 config.retention.refusals)  # fmt: skip
    return deleted


def _prune_models(store: GatewayStore, config: GatewayConfig, out: Pruned) -> Pruned:
    rules = config.rounds
    count = config.retention.models
    if rules.mode == "async":
        count = max(count, rules.max_staleness + 1)
    models = store.models()  # oldest first
    protected = {m["version"] for m in models[-count:]}
    for key in ("current_version", ROLLED_BACK_TO):
        value = store.get_meta(key)
        if value:
            protected.add(value)
    protected |= {r.base_version.hex() for r in store.open_round_rows()}
    doomed = [m for m in models if m["version"] not in protected]
    if not doomed:
        return out
    with store.transaction() as db:
        db.executemany("DELETE FROM models WHERE version = ?", [(m["version"],) for m in doomed])
    models_dir = config.storage / "models"
    for m in doomed:  # after the commit: a crash between leaves files nobody names, never a row without its file
        files = VersionFiles.of(models_dir, bytes.fromhex(m["version"]))
        for path in (files.model, files.master, files.strategy):
            try:
                out.files_bytes += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
    out.models = len(doomed)
    return out
