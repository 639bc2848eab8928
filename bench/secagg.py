"""Benchmark ``secagg``: what secure aggregation (SecAgg+ over announced coordinates) costs, and what it does to
accuracy, beside plain sparse updates in the same run.

Cost, for 10, 50, 100 and 1,000 devices per round: the digits MLP's real delta (6,570 entries, one local
epoch), 10% of its entries per device. Plain: the real compressor's top-k with int8 values and error
feedback, the real codec, the gateway's StreamingAggregate. SecAgg+: the same count of coordinates,
announced by the gateway; each device's input clipped, quantised to 8 bits and masked; the real device
and gateway state machines, every message through the codec (tinyfed/secagg_local.py); degree
4 log2(n) (capped at n - 1), threshold just above half the holders. Per device: uplink bytes (all four
answers) and process CPU; the gateway's CPU; the round's compute critical path (per step, the slowest
device plus the gateway; the transport is not in it: round_scale measures that).

Accuracy on digits (100 IID devices, 10 per round, FedAvg, clip 1.0 on both arms): plain top-k at 10%
density against secure aggregation whose masked input takes the same bytes as the plain update (the
coordinate count set from the plain arm's mean update size), the full protocol's bytes beside it. Both
arms train with the same seeds and the same server step (gateway.master and the strategy), and the
published int8 model is scored on the test split. ``--full`` adds HAR (cnn1d, the last two layers).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import print_table, write_result
from edge_runtime import wire
from edge_runtime.compress.compressor import CompressionConfig, Compressor
from edge_runtime.data import partition
from edge_runtime.data.sources import load_source
from edge_runtime.local_training import task_training
from edge_runtime.model.backends import default_backend
from edge_runtime.model.info import model_labels, quantize_input
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.secagg import SparseInput
from edge_runtime.secagg.field import packed_size
from edge_runtime.train.build import build_model
from edge_runtime.train.trainer import Trainer, cut_for_last_layers
from gateway.aggregate import StreamingAggregate
from gateway.master import MasterModel
from gateway.secagg import choose_coordinates, plan, threshold_for
from gateway.strategies import make_strategy
from gateway.strategies.base import RoundInput
from tinyfed.secagg_local import run_session
from tinyfed.simulation import score

DENSITY = 0.1
INPUT_BITS = 8
CLIP = 1.0
# The bounded arm ([secagg] value_bound): each value bounded by VALUE_BOUND x clip / sqrt(coordinates), which
# makes a step at BOUNDED_BITS as fine as the clip's at 8 and fits more coordinates in the same bytes.
BOUNDED_BITS = 4
VALUE_BOUND = 2.0


def degree_for(devices: int) -> int:
    return min(devices - 1, 4 * math.ceil(math.log2(max(2, devices))))


def session_shape(devices: int) -> tuple[int, int]:
    """(degree, threshold) of a session of ``devices``."""
    degree = degree_for(devices)
    holders = min(devices - 1, degree + degree % 2) + 1
    return degree, threshold_for(holders)


# ---- cost ---------------------------------------------------------------------------------------------------------


def plain_cost(delta: dict[int, np.ndarray], sizes: dict[int, int], devices: int) -> dict[str, float]:
    device_cpu, sent = [], []
    encoded = []
    for i in range(devices):
        t0 = time.process_time()
        compressor = Compressor(CompressionConfig(density=DENSITY, clip=CLIP, seed=i))
        compressed = compressor.compress(delta)
        data = wire.encode(wire.Update(os.urandom(16), f"d{i}", 1, bytes(32), 10, compressed.tensors))
        device_cpu.append(time.process_time() - t0)
        sent.append(len(data))
        encoded.append(data)
    t0 = time.process_time()
    aggregate = StreamingAggregate(sizes, uniform=True)
    for data in encoded:
        aggregate.add(wire.decode(data, expect=wire.Update, spec=sizes))
    aggregate.round_input()
    gateway = time.process_time() - t0
    return {"uplink_bytes": float(np.mean(sent)), "device_cpu_s": float(np.mean(device_cpu)), "gateway_cpu_s": gateway,
            "critical_path_s": max(device_cpu) + gateway}  # fmt: skip


def secagg_cost(delta: dict[int, np.ndarray], sizes: dict[int, int], devices: int) -> dict[str, float]:
    count = round(DENSITY * sum(sizes.values()))
    coordinates = choose_coordinates(sizes, count, os.urandom(32), None, 1.0)
    fp = plan(devices, count, CLIP, INPUT_BITS)
    degree, threshold = session_shape(devices)
    setup = wire.SecAggSetup(bytes(16), 1, 1, devices, degree, threshold, bytes(32), fp.bits, fp.step, CLIP, 0.0,
                             coordinates, 0)  # fmt: skip
    inputs, prepare_cpu = {}, {}
    for i in range(devices):
        t0 = time.process_time()
        values, _ = SparseInput().prepare(delta, setup)
        name = f"d{i:05d}"
        inputs[name], prepare_cpu[name] = values, time.process_time() - t0
    session, result = run_session(inputs, coordinates, fp, degree=degree, threshold=threshold,
                                  min_survivors=threshold)  # fmt: skip
    assert len(result.survivors) == devices
    device_cpu = [session.device_cpu[n] + prepare_cpu[n] for n in inputs]
    return {
        "uplink_bytes": float(np.mean(list(session.uplink.values()))),
        "masked_input_bytes": float(np.mean(list(session.masked_bytes.values()))),
        "device_cpu_s": float(np.mean(device_cpu)),
        "gateway_cpu_s": session.gateway_cpu,
        "critical_path_s": session.critical_path + max(prepare_cpu.values()),
        "degree": float(degree), "threshold": float(threshold), "field_bits": float(fp.bits),
    }  # fmt: skip


# ---- accuracy -----------------------------------------------------------------------------------------------------


@dataclass
class Federation:
    data: str = "digits"
    devices: int = 100
    per_round: int = 10
    rounds: int = 30
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 16
    trainable_layers: int = 0
    score_every: int = 5
    seed: int = 0

    @property
    def arch(self) -> str:
        return "cnn1d" if self.data == "har" else "mlp"


class Device:
    """A device's data and its residual (the compressor's for top-k, its own for secure aggregation)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: Any, seed: int) -> None:
        self.x, self.y, self.classes, self.seed = x, y, classes, seed
        self.compressor = Compressor(CompressionConfig())
        self.sparse = SparseInput()

    def delta(self, task: wire.Task, model: bytes, layers: int, backend: Any) -> dict[int, np.ndarray]:
        graph = read_graph(model)
        training, compression = task_training(task, seed=self.seed * 100_003 + task.round)
        trainer = Trainer(graph, cut_for_last_layers(graph, layers), backend, training)
        trainer.fit_features(trainer.features(quantize_input(graph, self.x)),
                             model_labels(graph, self.y, self.classes).astype(np.int64))  # fmt: skip
        self.compressor.config = compression
        return trainer.delta_by_tensor()


def federation(
    fed: Federation, arm: str, coordinate_count: int = 0, input_bits: int = INPUT_BITS, value_bound: float = 0.0
) -> dict[str, Any]:
    """One run: ``arm`` is "plain" (top-k at DENSITY) or "secagg" (``coordinate_count`` announced coordinates)."""
    backend = default_backend()
    split = load_source(fed.data, seed=fed.seed)
    model = write_graph(build_model(fed.arch, split.train.x, split.train.classes, seed=fed.seed))
    master = MasterModel(model, fed.trainable_layers)
    sizes = master.sizes
    strategy = make_strategy("fedavg")
    shares = partition.iid(split.train, fed.devices, seed=fed.seed)
    devices = [Device(split.train.x[idx], split.train.y[idx], split.train.classes, fed.seed * 7919 + i)
               for i, idx in sorted(shares.items())]  # fmt: skip
    rng = np.random.default_rng(fed.seed + 1)
    previous: dict[int, np.ndarray] | None = None
    accuracy: list[tuple[int, float]] = []
    uplink: list[float] = []
    payload: list[float] = []
    for r in range(1, fed.rounds + 1):
        chosen = sorted(int(i) for i in rng.choice(fed.devices, fed.per_round, replace=False))
        task = wire.Task(bytes(16), r, bytes(32), fed.epochs, fed.learning_rate, DENSITY, 0, fed.batch_size,
                         report=False, clip=CLIP)  # fmt: skip
        deltas = {i: {t: d for t, d in devices[i].delta(task, model, fed.trainable_layers, backend).items()
                      if t in sizes} for i in chosen}  # fmt: skip
        if arm == "plain":
            aggregate = StreamingAggregate(sizes, uniform=True)
            for i in chosen:
                compressed = devices[i].compressor.compress(deltas[i])
                data = wire.encode(wire.Update(os.urandom(16), f"d{i}", r, bytes(32), 1, compressed.tensors))
                devices[i].compressor.commit(compressed)
                aggregate.add(wire.decode(data, expect=wire.Update, spec=sizes))
                uplink.append(len(data))
                payload.append(len(data))
            mean = aggregate.round_input().mean
        else:
            coordinates = choose_coordinates(sizes, coordinate_count, rng.bytes(32), previous, 0.5)
            fp = plan(fed.per_round, coordinate_count, CLIP, input_bits, value_bound=value_bound)
            degree, threshold = session_shape(fed.per_round)
            setup = wire.SecAggSetup(bytes(16), r, 1, fed.per_round, degree, threshold, bytes(32), fp.bits, fp.step,
                                     CLIP, 0.0, coordinates, 0, fp.levels)  # fmt: skip
            inputs, pending = {}, {}
            for i in chosen:
                inputs[f"d{i:05d}"], pending[i] = devices[i].sparse.prepare(deltas[i], setup)
            session, result = run_session(inputs, coordinates, fp, degree=degree, threshold=threshold,
                                          min_survivors=threshold, round_=r, clip=CLIP)  # fmt: skip
            for i in chosen:
                devices[i].sparse.commit(pending[i])
            uplink += list(session.uplink.values())
            payload += list(session.masked_bytes.values())
            mean = {t: np.zeros(n) for t, n in sizes.items()}
            for tensor, (indices, values) in result.sum.items():
                mean[tensor][indices] = values / len(result.survivors)
        previous = mean
        master.set_weights(strategy.step(master.weights(), RoundInput(mean)))
        model = master.export()
        if r % fed.score_every == 0 or r == fed.rounds:
            accuracy.append((r, score(backend, model, split.test, "accuracy")))
    return {"accuracy": accuracy, "final_accuracy": accuracy[-1][1], "uplink_bytes": float(np.mean(uplink)),
            "payload_bytes": float(np.mean(payload))}  # fmt: skip


def compare(fed: Federation) -> dict[str, Any]:
    """Plain top-k, then secure aggregation whose masked input is as large as the plain arm's mean update."""
    plain = federation(fed, "plain")
    overhead = len(wire.encode(wire.SecAggMasked(bytes(16), 1, b""))) + 2

    def fitting(input_bits: int) -> tuple[int, int]:
        """(coordinates, field bits): as many coordinates as make a masked input of the plain update's bytes."""
        bits = plan(fed.per_round, 1, CLIP, input_bits).bits
        count = 1
        while packed_size(count + 1, bits) + overhead <= plain["payload_bytes"]:
            count += 1
        return count, bits

    count, bits = fitting(INPUT_BITS)
    secagg = federation(fed, "secagg", count)
    bounded_count, bounded_bits = fitting(BOUNDED_BITS)
    bounded = federation(fed, "secagg", bounded_count, BOUNDED_BITS, VALUE_BOUND)
    return {"plain": plain, "secagg": secagg, "coordinates": count, "field_bits": bits,
            "bounded": bounded, "bounded_coordinates": bounded_count, "bounded_field_bits": bounded_bits}  # fmt: skip


def main(full: bool = False) -> dict[str, float]:
    from bench.codec import real_deltas

    delta, _ = real_deltas("mlp")
    sizes = {t: d.size for t, d in delta.items()}
    figures: dict[str, float] = {}
    details: dict[str, Any] = {"density": DENSITY, "input_bits": INPUT_BITS, "clip": CLIP, "cost": {}}
    for devices in (10, 50, 100, 1000):
        plain = plain_cost(delta, sizes, devices)
        secure = secagg_cost(delta, sizes, devices)
        details["cost"][devices] = {"plain": plain, "secagg": secure}
        figures[f"uplink_bytes_per_device_{devices}"] = secure["uplink_bytes"]
        figures[f"plain_uplink_bytes_per_device_{devices}"] = plain["uplink_bytes"]
        figures[f"device_cpu_ms_{devices}"] = 1000 * secure["device_cpu_s"]
        figures[f"plain_device_cpu_ms_{devices}"] = 1000 * plain["device_cpu_s"]
        figures[f"gateway_cpu_s_{devices}"] = secure["gateway_cpu_s"]
        figures[f"plain_gateway_cpu_s_{devices}"] = plain["gateway_cpu_s"]
        figures[f"round_compute_s_{devices}"] = secure["critical_path_s"]
        figures[f"plain_round_compute_s_{devices}"] = plain["critical_path_s"]
        print(f"{devices} devices: secagg {secure}, plain {plain}", flush=True)
    runs = [Federation()]
    if full:
        runs.append(Federation(data="har", epochs=2, learning_rate=0.05, trainable_layers=2, rounds=30))
    for fed in runs:
        result = compare(fed)
        details[fed.data] = result | {"federation": fed.__dict__}
        figures[f"{fed.data}_accuracy_secagg"] = result["secagg"]["final_accuracy"]
        figures[f"{fed.data}_accuracy_plain_topk"] = result["plain"]["final_accuracy"]
        figures[f"{fed.data}_accuracy_secagg_bounded"] = result["bounded"]["final_accuracy"]
        figures[f"{fed.data}_coordinates_secagg_bounded"] = float(result["bounded_coordinates"])
        figures[f"{fed.data}_secagg_payload_bytes"] = result["secagg"]["payload_bytes"]
        figures[f"{fed.data}_plain_payload_bytes"] = result["plain"]["payload_bytes"]
        ratio = result["secagg"]["uplink_bytes"] / result["plain"]["uplink_bytes"]
        figures[f"{fed.data}_secagg_total_uplink_ratio"] = ratio
        figures[f"{fed.data}_coordinates_secagg"] = float(result["coordinates"])
        print(f"{fed.data}: {result}", flush=True)
    write_result("secagg", figures, details)
    print_table("secagg", figures)
    return figures


if __name__ == "__main__":
    main()
