"""The federation as an operator sees it, as one JSON-ready dict: ``gateway status --json`` and the dashboard.

Read through a read-only connection (``gateway.readonly``), so it runs beside a running gateway and changes
nothing. Times are unix seconds (a browser or ``jq`` formats them); versions are full hex (the text views
shorten them). Whether a gateway runs on the storage is read from its lock (``gateway.lock``).
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_runtime import wire


def device_state(online: int, failure: str | None) -> str:
    """One word per device, shared by the metrics, ``gateway status --json`` and the dashboard."""
    if failure:
        return "failed"
    return "online" if online else "offline"


def running_gateway(storage: Path) -> dict[str, Any]:
    """Whether a gateway holds the storage's lock now, and its process id when it wrote one."""
    lock = storage / "gateway.lock"
    if not lock.exists():
        return {"running": False, "pid": None}
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return {"running": True, "pid": int(text) if text.isdigit() else None}
        fcntl.flock(handle, fcntl.LOCK_UN)
    return {"running": False, "pid": None}


def _presence(blob: bytes | None) -> wire.Capabilities | None:
    if not blob:
        return None
    try:
        return wire.decode(blob, expect=wire.Presence).capabilities
    except wire.WireError:
        return None


def snapshot(
    db: sqlite3.Connection,
    storage: Path,
    rounds: int = 50,
    privacy: dict[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the operator's views show: the open round, the last ``rounds`` rounds, devices, models."""
    now = time.time() if now is None else now

    def rows(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return db.execute(sql, args).fetchall()

    current_row = rows("SELECT value FROM meta WHERE key = 'current_version'")
    current = current_row[0][0] if current_row else None
    state: dict[str, Any] = {}
    last = rows(
        "SELECT round, base_version, status, mode, started, deadline, closed, target, new_version, note FROM rounds "
        "ORDER BY round DESC LIMIT ?",
        (rounds,),
    )
    tasked = dict(rows("SELECT round, COUNT(*) FROM selections WHERE round >= ? GROUP BY round",
                       (last[-1][0] if last else 0,)))  # fmt: skip
    sizes = dict(rows("SELECT version, size FROM models"))
    ledger_modes = dict(rows("SELECT round, mode FROM privacy_ledger"))
    history = []
    for r, base, status, mode, started, deadline, closed, target, new_version, note in reversed(last):
        counts = dict.fromkeys(("train", "eval"), 0)
        uplink = dense = 0
        for kind, n, nbytes, dense_bytes in rows(
            "SELECT kind, COUNT(*), SUM(bytes), SUM(dense_bytes) FROM updates WHERE round = ? GROUP BY kind", (r,)
        ):
            counts[kind] = n
            uplink += nbytes
            dense += dense_bytes
        metrics = dict(rows("SELECT name, value FROM metrics WHERE round = ?", (r,)))
        history.append({
            "round": r, "status": status, "mode": mode, "started": started, "deadline": deadline, "closed": closed,
            "seconds": (closed - started) if closed else None, "target": target,
            # A secure round's updates are its masked inputs (gateway/service.py counts each answer's bytes).
            "updates": counts["train"] + counts.get("secagg-masked", 0), "reports": counts["eval"],
            "refused": rows("SELECT COUNT(*) FROM refusals WHERE round = ?", (r,))[0][0],
            "uplink_bytes": uplink, "dense_bytes": dense,
            # Each tasked device fetches the round's base model once: an estimate, the broker's fan-out is not seen.
            "downlink_bytes_estimate": sizes.get(base, 0) * tasked.get(r, 0),
            "base_version": base, "new_version": new_version, "note": note,
            "accuracy": metrics.get("eval_accuracy"), "loss": metrics.get("eval_loss"),
            "privacy": ledger_modes.get(r),  # the ledger's mode of a DP round (distributed-dp: secure aggregation)
        })  # fmt: skip
    open_rounds = [h for h in history if h["status"] == "open"]
    phase = "idle"
    if open_rounds:
        phase = "evaluating" if open_rounds[-1]["mode"] == "eval" else "training"
    state["round"] = history[-1]["round"] if history else 0
    state["phase"] = phase

    failures_by_device = dict(rows("SELECT device, COUNT(*) FROM failures GROUP BY device"))
    refusals_by_device: dict[str, dict[str, Any]] = {}
    for device, n, reason in rows(
        "SELECT device, COUNT(*), (SELECT reason FROM refusals r2 WHERE r2.device = r1.device ORDER BY id DESC "
        "LIMIT 1) FROM refusals r1 GROUP BY device"
    ):
        refusals_by_device[device] = {"count": n, "last_reason": reason}
    devices = []
    for device, online, last_seen, blob, failure in rows(
        "SELECT device, online, last_seen, capabilities, failure FROM devices ORDER BY device"
    ):
        caps = _presence(blob)
        refused = refusals_by_device.get(device, {"count": 0, "last_reason": None})
        devices.append({
            "device": device, "state": device_state(online, failure), "last_seen": last_seen,
            "seen_ago_s": max(0.0, now - last_seen),
            "model_version": caps.model_version.hex() if caps is not None and caps.model_version else None,
            "samples": caps.samples if caps is not None else None, "backend": caps.backend if caps else None,
            "failure": failure, "failures": failures_by_device.get(device, 0),
            "refusals": refused["count"], "last_refusal": refused["last_reason"],
        })  # fmt: skip
    models = [
        {"version": v, "round": r, "created": c, "size": s, "current": v == current, "seq": q,
         "file": Path(p).name, "on_disk": Path(p).is_file()}
        for v, r, c, s, p, q in rows("SELECT version, round, created, size, path, seq FROM models ORDER BY seq")
    ]  # fmt: skip
    refusals = [
        {"device": d, "round": r, "reason": why, "bytes": b, "received": t}
        for d, r, why, b, t in reversed(rows("SELECT device, round, reason, bytes, received FROM refusals "
                                             "ORDER BY id DESC LIMIT 20"))
    ]
    failures = [
        {"device": d, "round": r, "kind": k, "reason": wire.FailureReason(reason).name.lower(), "detail": detail,
         "received": t}
        for d, r, k, reason, detail, t in reversed(rows("SELECT device, round, kind, reason, detail, received FROM "
                                                        "failures ORDER BY received DESC LIMIT 20"))
    ]
    return {
        "generated": now,
        "gateway": running_gateway(storage),
        "current_version": current,
        **state,
        "rounds": history,
        "devices": devices,
        "models": models,
        "refusals": refusals,
        "failures": failures,
        "privacy": privacy,
    }
