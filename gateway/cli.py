"""``tinyfed gateway run | status | rollback | export``.

Exit codes (``edge_runtime.errors.ExitCode``, returned by ``tinyfed`` from
the error raised here): 0 after SIGTERM/SIGINT or the configured number of
rounds; 2 for a configuration error (``ConfigError``); 3 when the broker
cannot be reached (``TransportError``); 4 when another gateway holds the
storage directory (``StorageLocked``); 5 when another gateway of the
federation is running (``SecondGateway``, at start) or took over this
one's client id (``ClientIdConflict``, while running). A supervisor should
not restart on 5: the two would take the federation from each other.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edge_runtime.config import ConfigError
from edge_runtime.errors import ExitCode, TinyfedError
from edge_runtime.shutdown import stop_on_signals
from edge_runtime.storage import atomic_write

from .config import GatewayConfig

if TYPE_CHECKING:
    from .store import GatewayStore


class StorageLocked(RuntimeError, TinyfedError):
    """Another gateway holds the storage directory's lock."""

    exit_code = ExitCode.STORAGE_LOCKED


@contextlib.contextmanager
def storage_lock(storage: Path, advice: str = "") -> Iterator[None]:
    """One gateway per storage directory: two writers would each count the other's updates as replays."""
    storage.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(storage / "gateway.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise StorageLocked(f"{storage} is in use by a running gateway" + (f"; {advice}" if advice else "")) from exc
    handle.truncate(0)  # our process id, for `gateway status` (gateway/report.py running_gateway)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


log = logging.getLogger("gateway.run")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.logformat import configure_logging

    log_format = getattr(args, "log_format", "text")
    configure_logging(args.verbose, log_format)

    def say(text: str, fields: dict[str, object]) -> None:
        """What the operator reads: a line on stdout, or with --log-format json a JSON record with its fields."""
        if log_format == "json":
            log.info(text.strip(), extra={"fields": fields})
        else:
            print(text, flush=True)
    config = GatewayConfig.load(args.config)
    from edge_runtime.transport.mqtt import ClientIdConflict, TransportError

    from .service import Gateway, RoundSummary

    stop = stop_on_signals()
    with storage_lock(config.storage):
        gateway = Gateway(config)

        def report(summary: RoundSummary) -> None:
            """The one line per round (the round machinery logs its own at DEBUG only)."""
            ratio = summary.dense_bytes / summary.uplink_bytes if summary.uplink_bytes else float("nan")
            acc = summary.metrics.get("eval_accuracy")
            shown = f"{acc:.4f}" if acc is not None else "-"
            fields = {"event": "round", "round": summary.round, "status": summary.status,
                      "version": summary.version.hex() if summary.version else None, "updates": summary.accepted,
                      "refused": summary.refused, "uplink_bytes": summary.uplink_bytes,
                      "dense_bytes": summary.dense_bytes, "seconds": round(summary.seconds, 3),
                      "metrics": summary.metrics}  # fmt: skip
            say(
                f"round {summary.round:>4} {summary.status:<6} updates {summary.accepted:>4} "
                f"refused {summary.refused:>3}  base-model accuracy (federated) {shown}  "
                f"uplink {summary.uplink_bytes} B ({ratio:.0f}x below dense float32)  {summary.seconds:.1f} s",
                fields,
            )

        gateway.on_round_closed.append(report)
        gateway.link.on_fatal_hooks.append(lambda conflict: stop.set())
        try:
            gateway.start()
        except ClientIdConflict:
            gateway.link.stop()
            raise
        except TransportError as exc:
            gateway.link.stop()
            raise TransportError(
                f"cannot reach the MQTT broker at {config.broker.url}: {exc}. "
                f"Check [broker] url in {args.config} (or TINYFED_BROKER_URL)."
            ) from exc
        intake = intake_decoder()
        say(
            f"gateway of federation {config.gateway.federation}: model {gateway.version.hex()[:12]}, "
            f"strategy {gateway.strategy.name}, {config.rounds.mode} rounds, broker {config.broker.url}, "
            f"intake decoder {intake}",
            {"event": "started", "federation": config.gateway.federation, "version": gateway.version.hex(),
             "pid": os.getpid(), "intake_decoder": intake.split(" ")[0]},
        )  # fmt: skip
        from .observe import Observers

        observers = Observers(gateway)
        try:
            observers.start()
            while not stop.wait(0.5):
                if gateway.finished.is_set():
                    break
        finally:
            observers.stop()
            gateway.stop()
    if gateway.link.fatal is not None:
        raise gateway.link.fatal
    return 0


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def intake_decoder() -> str:
    """Which decoder the intake runs, said at start: without the C path a hub spends 1.7-2.9 times the CPU
    per update (seven runs, docs/performance.md), so an operator should see when it runs without it, and why."""
    from edge_runtime.wire import accel

    if accel.native is not None:
        return "C"
    if accel.built is not None or os.environ.get("TINYFED_PURE_PYTHON") == "1":
        return "Python (TINYFED_PURE_PYTHON=1)"
    return "Python (the C path is not built: docs/operations.md, 'The intake's C path')"


def status(args: argparse.Namespace) -> int:
    config = GatewayConfig.load(args.config)
    from edge_runtime import wire

    from .disk import DiskSpace
    from .registry import EXPELLED
    from .store import GatewayStore

    db = config.storage / "gateway.db"
    if not db.exists():
        raise ConfigError(f"no state at {db}: the gateway has not run with this storage")
    if args.json:
        return status_json(config, args)
    from .report import running_gateway

    running = running_gateway(config.storage)
    store = GatewayStore(db)
    current = store.current_version
    print(f"federation {config.gateway.federation}, model {current.hex()[:12] if current else '-'}")
    if running["running"]:
        print(f"gateway: running on this storage{' (process ' + str(running['pid']) + ')' if running['pid'] else ''}")
    else:
        print("gateway: not running on this storage")
    shortage = DiskSpace(config.storage, config.gateway.min_free_mb).shortage()
    if shortage:
        print(f"PAUSED: {shortage}")
    devices = store.devices()
    online = sum(1 for d in devices if d["online"])
    expelled = sum(1 for d in devices if d["failure_key"] == EXPELLED)
    failing = sum(1 for d in devices if d["failure"]) - expelled
    out = f", {expelled} out (revoked or not enrolled)" if expelled else ""
    print(f"devices: {len(devices)} known, {online} online, {failing} left out after a failed task{out}")
    askable = sum(1 for d in devices if d["online"] and not d["failure"])
    if config.rounds.mode == "sync" and askable < config.rounds.min_devices and store.open_round_row() is None:
        print(f"WAITING: {askable} online device(s) that may be asked, [rounds] min_devices = "
              f"{config.rounds.min_devices}: no round opens until more are")  # fmt: skip
    now = time.time()
    for d in devices[: args.devices]:
        caps = wire.decode(d["capabilities"], expect=wire.Presence).capabilities if d["capabilities"] else None
        model = caps.model_version.hex()[:12] if caps and caps.model_version else "-"
        samples = caps.samples if caps else "-"
        state, seen = "online" if d["online"] else "offline", _ago(now - d["last_seen"])
        line = f"  {d['device']:<20} {state:<7} seen {seen:<12} model {model:<12} samples {samples}"
        if d["failure"]:
            line += f"  {'OUT' if d['failure_key'] == EXPELLED else 'FAILED'}: {d['failure']}"
        print(line)
    if len(devices) > args.devices:
        print(f"  ... and {len(devices) - args.devices} more (--devices N shows more)")
    for line in privacy_lines(config, store):
        print(line)
    for line in secagg_lines(config, store.get_meta("secagg_session"), time.time()):
        print(line)
    from .robustness.operator import status_lines

    for line in status_lines(config, store, args.last):
        print(line)
    print(f"{'round':>6} {'status':<7} {'mode':<5} {'privacy':<14} {'updates':>7} {'refused':>7} {'uplink B':>9} "
          f"{'x dense':>8} {'fed. acc':>8}  model")  # fmt: skip
    ledger_modes = {e.round: e.mode for e in store.ledger()}
    for row in store.rounds(args.last):
        counts = store.round_counts(row.round)
        metrics = store.metrics(row.round)
        ratio = counts["dense_bytes"] / counts["uplink_bytes"] if counts["uplink_bytes"] else float("nan")
        acc = metrics.get("eval_accuracy")
        updates = counts["train"] + counts.get("secagg-masked", 0)  # a secure round's: its masked inputs
        privacy = ledger_modes.get(row.round, row.privacy)  # distributed-dp: a secure round's, in the ledger
        print(
            f"{row.round:>6} {row.status:<7} {row.mode:<5} {privacy:<14} {updates:>7} "
            f"{counts['refused']:>7} {counts['uplink_bytes']:>9} {ratio:>8.0f} "
            f"{acc if acc is not None else float('nan'):>8.4f}  "
            f"{row.new_version.hex()[:12] if row.new_version else (row.note or '')}"
        )
    from .groups import status_lines as group_lines

    evaluations = [r for r in store.rounds(args.last) if r.mode == "eval"]
    for line in group_lines(evaluations[-1].round, store.metrics(evaluations[-1].round)) if evaluations else []:
        print(line)
    failures = store.failures(args.last)
    if failures:
        print("latest task failures:")
        for f in failures:
            print(f"  round {f['round']} {f['device']}: {wire.FailureReason(f['reason']).name.lower()}"
                  f"{': ' + f['detail'] if f['detail'] else ''}")  # fmt: skip
    refusals = store.refusals()[-args.last :]
    if refusals:
        print("latest refusals:")
        for r in refusals:
            print(f"  round {r['round']} {r['device']}: {r['reason']}")
    store.close()
    return 0


def status_json(config: GatewayConfig, args: argparse.Namespace) -> int:
    """``status --json``: the dashboard's snapshot (gateway/report.py), read-only, on stdout."""
    from .readonly import open_readonly
    from .report import snapshot

    privacy: dict[str, Any] | None = None
    if config.privacy.on:
        from .privacy.budget import budget_of
        from .store import GatewayStore

        store = GatewayStore(config.storage / "gateway.db")
        try:
            budget = budget_of(config, store)
            assert budget is not None
            spent = budget.spent()
        finally:
            store.close()
        privacy = {"mode": spent.mode, "epsilon": spent.epsilon, "target": spent.target, "delta": spent.delta,
                   "rounds_left": spent.rounds_left}  # fmt: skip
    elif config.secagg.on and config.secagg.noise_multiplier > 0:
        privacy = {"mode": "distributed-dp", "budget": None, "noise_multiplier": config.secagg.noise_multiplier}
    connection = open_readonly(config.storage / "gateway.db")
    try:
        report = snapshot(connection, config.storage, rounds=args.last, privacy=privacy)
        found = connection.execute("SELECT value FROM meta WHERE key = 'secagg_session'").fetchall()
    finally:
        connection.close()
    if config.secagg.on:
        report["secagg"] = {"mode": config.secagg.mode, "noise_multiplier": config.secagg.noise_multiplier,
                            "session": (json.loads(found[0][0]) or None) if found else None}  # fmt: skip
    report["federation"] = config.gateway.federation
    report["devices"] = report["devices"][: args.devices]
    print(json.dumps(report, indent=2))
    return 0


def secagg_lines(config: GatewayConfig, recorded: str | None, now: float) -> list[str]:
    """Secure aggregation and its open session (the gateway writes it to the store at each change)."""
    s = config.secagg
    if not s.on:
        return []
    noise = f", distributed DP at noise multiplier {s.noise_multiplier:g}" if s.noise_multiplier > 0 else ""
    lines = [f"secure aggregation: SecAgg+ over announced coordinates (clip {s.clip:g}, {s.input_bits} input bits"
             f"{noise}; docs/secagg.md)"]  # fmt: skip
    state = json.loads(recorded) if recorded else {}
    if not state:
        lines.append("  no session open")
        return lines
    left = state["step_deadline"] - now
    lines.append(
        f"  session of round {state['round']}: step {state['step']}, {state['answered']} of {state['asked']} "
        f"answered ({'due in ' + _ago(left).removesuffix(' ago') if left > 0 else 'due now'}); "
        f"{state['masked']} of {state['devices']} masked inputs in, a sum needs {state['min_survivors']} survivors "
        f"and each secret {state['threshold']} shares; {state['coordinates']} coordinates"
    )
    return lines


def privacy_lines(config: GatewayConfig, store: GatewayStore) -> list[str]:
    """The privacy mode and its budget: epsilon spent and left, and rounds left at the current settings."""
    p = config.privacy
    ledger = store.ledger()
    if not p.on and config.secagg.on and config.secagg.noise_multiplier > 0:
        return [f"privacy: distributed-dp (secure aggregation's noise, [secagg] noise_multiplier "
                f"{config.secagg.noise_multiplier:g}) WITHOUT A BUDGET: {len(ledger)} rounds in the ledger, nothing "
                'stops rounds ([privacy] mode = "distributed-dp" sets one)']  # fmt: skip
    if not p.on:
        return [f"privacy: off ({len(ledger)} earlier DP rounds in the ledger)"] if ledger else ["privacy: off"]
    from .privacy.budget import budget_of

    budget = budget_of(config, store)
    assert budget is not None
    spent = budget.spent()
    left = max(0.0, spent.target - spent.epsilon)
    if spent.mode == "distributed-dp":
        lines = [
            f"privacy: distributed-dp (secure aggregation: each device's Skellam share, summed), "
            f"({spent.target:g}, {spent.delta:g})-DP per device: epsilon {spent.epsilon:.4g} spent ({p.accountant}), "
            f"{left:.4g} remaining, {spent.rounds_left} rounds left at noise multiplier "
            f"{config.secagg.noise_multiplier:g} (the threshold's devices)",
            f"  clip {config.secagg.clip:.4g} on the devices; {spent.rounds} rounds in the ledger",
        ]
        if spent.rounds_left == 0:
            lines.append("  BUDGET SPENT: no training round opens (one more would exceed it)")
    elif spent.mode == "central-dp":
        lines = [
            f"privacy: central-dp, ({spent.target:g}, {spent.delta:g})-DP per device: epsilon {spent.epsilon:.4g} "
            f"spent ({p.accountant}), {left:.4g} remaining, {spent.rounds_left} rounds left at sampling rate "
            f"{p.sampling_rate:g} and noise multiplier {p.noise_multiplier:g}",
            f"  clip {spent.clip:.4g}{' (adaptive)' if p.adaptive_clip else ''}; {spent.rounds} rounds in the ledger",
        ]
        if spent.rounds_left == 0:
            lines.append("  BUDGET SPENT: no training round opens (one more would exceed it)")
    else:
        lines = [
            f"privacy: local-dp, ({spent.target:g}, {spent.delta:g})-DP for each device's own updates: the most "
            f"exposed device has spent epsilon {spent.epsilon:.4g} ({p.accountant}), {left:.4g} remaining, "
            f"{spent.rounds_left} more updates at noise multiplier {p.noise_multiplier:g}",
            f"  clip {spent.clip:.4g}; {spent.rounds} rounds in the ledger",
        ]
    for entry in ledger[-3:]:
        lines.append(
            f"  ledger round {entry.round}: {entry.mode}, population {entry.population}, q {entry.sampling_rate:g}, "
            f"clip {entry.clip:.4g}, z {entry.noise_multiplier:g} (sum {entry.update_noise:.4g}), "
            f"{entry.participants} participants"
        )
    return lines


def rollback(args: argparse.Namespace) -> int:
    config = GatewayConfig.load(args.config)
    from .publisher import rollback as make_current
    from .store import GatewayStore

    with storage_lock(config.storage, advice="stop it first, then roll back"):
        store = GatewayStore(config.storage / "gateway.db")
        try:
            model = make_current(store, args.to)
        except LookupError as exc:
            raise ConfigError(str(exc.args[0])) from exc
        finally:
            store.close()
    print(f"rolled back to model {model['version'][:12]} (round {model['round']}); it is published at the next start")
    return 0


def _read_only(db: Path) -> sqlite3.Connection:
    """The gateway's store opened read-only: export works beside a running gateway and can change nothing."""
    if not db.exists():
        raise ConfigError(f"no state at {db}: the gateway has not run with this storage")
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        connection.execute("SELECT 1 FROM models LIMIT 1")
    except sqlite3.Error as exc:
        raise ConfigError(f"{db}: cannot read the gateway's store: {exc}") from exc
    return connection


def export(args: argparse.Namespace) -> int:
    """Copy one model version (the current one by default) out of the store, verified by its sha256."""
    config = GatewayConfig.load(args.config)
    db = config.storage / "gateway.db"
    connection = _read_only(db)
    try:
        current = connection.execute("SELECT value FROM meta WHERE key = 'current_version'").fetchone()
        models = connection.execute("SELECT version, round, path FROM models ORDER BY seq").fetchall()
    finally:
        connection.close()
    wanted = (args.version or (current[0] if current else "")).lower()
    matches = [m for m in models if m[0].startswith(wanted)] if wanted else []
    if len(matches) != 1:
        known = ", ".join(m[0][:12] for m in models) or "none"
        what = f"--version {args.version!r} matches {len(matches)} versions" if args.version else "no current version"
        raise ConfigError(f"{db}: {what}; known: {known}")
    version, round_, stored = matches[0]
    candidates = [Path(stored), config.storage / "models" / f"{version}.tflite"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"{config.storage / 'models'}: the file of model {version[:12]} is missing")
    model = found.read_bytes()
    if hashlib.sha256(model).hexdigest() != version:
        raise ConfigError(f"{found}: its sha256 is not its version {version[:12]}: the store is damaged")
    atomic_write(args.out, model)
    made = f"round {round_}" if round_ is not None else "the initial model"
    state = "current" if current and current[0] == version else "not current"
    print(f"wrote {args.out}: model {version[:12]} ({made}, {state}, {len(model)} bytes)")
    return 0
