"""Benchmark ``fuzz``: at least 100,000 hostile inputs per decoder; any exception but a WireError is a crash.

Decoders: one per message type (the valid golden vector of each type is the
seed, mutated by bit flips, byte overwrites, truncation, insertion,
duplication of a slice, and length-field bumps), plus raw random bytes.
Seeded, so a crash reproduces; each crash is reported with its input in hex.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result
from edge_runtime import wire

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "wire.json"
COMPACT = VECTORS.with_name("compact.json")


def mutate(seed: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(seed)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 6))
        pos = int(rng.integers(0, max(1, len(data))))
        if op == 0 and data:
            data[pos % len(data)] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and data:
            data[pos % len(data)] = int(rng.integers(0, 256))
        elif op == 2:
            del data[pos:]
        elif op == 3:
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8).tobytes()
        elif op == 4 and data:
            end = min(len(data), pos + int(rng.integers(1, 32)))
            data[pos:pos] = data[pos:end]
        elif op == 5 and data:
            # Bump a head's argument: lengths and counts are where decoders go wrong.
            data[pos % len(data)] = (data[pos % len(data)] & 0xE0) | int(rng.choice([24, 25, 26, 27, 31]))
    return bytes(data)


def plain_decode(data: bytes) -> Any:
    return wire.decode(data, spec={7: 1000, 8: 6})


def run_decoder(name: str, inputs: Any, count: int, decode: Any = plain_decode) -> dict[str, Any]:
    crashes: list[dict[str, str]] = []
    refused = accepted = 0
    t0 = time.perf_counter()
    for _ in range(count):
        data = inputs()
        try:
            decode(data)
            accepted += 1
        except wire.WireError:
            refused += 1
        except Exception as exc:  # the whole point: anything else is a defect
            if len(crashes) < 20:
                crashes.append({"input": data.hex(), "error": repr(exc), "trace": traceback.format_exc(limit=3)})
    seconds = time.perf_counter() - t0
    return {
        "decoder": name,
        "inputs": count,
        "refused": refused,
        "accepted": accepted,
        "crashes": len(crashes),
        "crash_examples": crashes,
        "inputs_per_s": count / seconds,
    }


def main(full: bool = False) -> dict[str, float]:
    per_decoder = 1_000_000 if full else 30_000  # the suite's share of its 15 minutes; --full for a real run
    vectors = json.loads(VECTORS.read_text())["valid"]
    seeds: dict[str, list[bytes]] = {}
    for v in vectors:  # every vector of a type seeds its decoder (updates: each index and value coding)
        seeds.setdefault(v["decoded"]["_type"], []).append(bytes.fromhex(v["hex"]))
    rng = np.random.default_rng(2026)
    results = [
        run_decoder(kind, lambda s=pool: mutate(s[int(rng.integers(0, len(s)))], rng), per_decoder)
        for kind, pool in seeds.items()
    ]
    # The compact update (type 10) is bits, not CBOR: mutated with its type byte kept, so its own decoder runs,
    # read against its vectors' spec, device and known versions.
    compact = json.loads(COMPACT.read_text())
    spec = {int(k): v for k, v in compact["spec"].items()}
    versions = [bytes.fromhex(v) for v in compact["versions"]]
    pool = [bytes.fromhex(v["hex"]) for v in compact["valid"]]

    def compact_input() -> bytes:
        data = mutate(pool[int(rng.integers(0, len(pool)))], rng)
        return bytes([wire.MSG_UPDATE_COMPACT]) + data[1:]

    results.append(
        run_decoder(
            "UpdateCompact",
            compact_input,
            per_decoder,
            lambda d: wire.decode(d, spec=spec, device=compact["device"], versions=versions),
        )
    )
    results.append(
        run_decoder(
            "random-bytes",
            lambda: rng.integers(0, 256, int(rng.integers(0, 200))).astype(np.uint8).tobytes(),
            per_decoder,
        )
    )
    figures = {
        "decoders": float(len(results)),
        "inputs_per_decoder": float(per_decoder),
        "inputs_total": float(sum(r["inputs"] for r in results)),
        "crashes": float(sum(r["crashes"] for r in results)),
        "min_inputs_per_s": min(r["inputs_per_s"] for r in results),
    }
    for r in results:
        if r["crashes"]:
            example = r["crash_examples"][0]
            print(f"CRASH in {r['decoder']}: {example['error']}\n  input {example['input']}")
    path = write_result("fuzz", figures, {r["decoder"]: r for r in results})
    print_table("fuzz", figures)
    print(f"  -> {path}")
    return figures


if __name__ == "__main__":
    main()
