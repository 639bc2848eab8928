"""The gateway's storage after N rounds of the digits demo, with [retention] and without (issue 19).

Not in the suite (a run at the issue's schedule of one round every 10 s takes 17 minutes): run it by hand,
one process per variant (they may run side by side; each has its own provisioned Mosquitto and storage):

    python -m bench.store_retention --rounds 100 --interval 10 --retention off
    python -m bench.store_retention --rounds 100 --interval 10 --retention on   # models = 5, updates = 5
    python -m bench.store_retention --rounds 100 --interval 10 --retention on --vacuum-mb 0.25

Each writes bench/results/store_retention_<on|off|on_vacuum>.json: the storage folder's bytes by entry (gateway.db with
its WAL, the models/ folder) when the federation ended, the rounds, the time and the last test accuracy.
The federation is the demo's (30 digits devices, Dirichlet(0.5), the MLP, FedAvgM, 5 local epochs, 0.6%
density, secured Mosquitto), through tinyfed.simulation.run_federation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench.common import write_result
from tinyfed.demo import DEFAULTS
from tinyfed.simulation import FederationSpec, run_federation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--interval", type=float, default=10.0, help="[rounds] interval, seconds")
    parser.add_argument("--retention", choices=("on", "off"), required=True)
    parser.add_argument("--keep-models", type=int, default=5)
    parser.add_argument("--keep-updates", type=int, default=5)
    parser.add_argument("--vacuum-mb", type=float, default=0.0, help="[retention] vacuum_mb (0: never)")
    args = parser.parse_args()
    settings = DEFAULTS["digits"]
    retention: dict[str, object] = {}
    if args.retention == "on":
        retention = {"models": args.keep_models, "updates": args.keep_updates, "vacuum_mb": args.vacuum_mb}
    name = f"store_retention_{args.retention}" + ("_vacuum" if args.retention == "on" and args.vacuum_mb else "")
    spec = FederationSpec(
        data="digits", rounds=args.rounds, epochs=int(settings["epochs"]),
        learning_rate=float(settings["learning_rate"]), density=float(settings["density"]),
        strategy={"name": "fedavgm", "momentum": 0.8}, interval=args.interval,
        operator={"retention": retention} if retention else {},
    )  # fmt: skip
    started = time.monotonic()
    result = run_federation(spec, timeout=args.rounds * max(args.interval, 1.0) * 3 + 600)
    seconds = time.monotonic() - started
    mb = result.storage_bytes / 1e6
    print(f"retention {args.retention}: {len(result.rounds)} rounds in {seconds:.0f} s, storage {mb:.2f} MB "
          f"{result.storage_files}")  # fmt: skip
    path = write_result(
        name,
        {"storage_mb": round(mb, 3), "rounds": float(len(result.rounds)), "seconds": round(seconds, 1),
         "last_test_accuracy": round(result.rounds[-1].score, 4) if result.rounds else 0.0},
        {"interval_s": args.interval, "retention": retention or "off (keep everything)",
         "storage_bytes_by_entry": result.storage_files, "broker": result.broker},
    )  # fmt: skip
    written = json.loads(path.read_text())
    written["command"] = "python -m bench.store_retention " + " ".join(sys.argv[1:])  # not in the suite
    path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
