"""``[secagg] value_bound``: a bound per value finer than the L2 clip (docs/secagg.md, "Accuracy").

A clipped vector spread over many coordinates has values far below the clip, so bounding each value by
``value_bound x clip / sqrt(coordinates)`` buys a finer step at the same input bits. The devices clamp to the
announced ``levels`` and keep what is above in their residual (nothing is lost); the field still holds the worst
case sum exactly; and through Mosquitto the gateway recovers the exact sum of the clamped inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.secagg import SparseInput
from edge_runtime.transport.broker import MosquittoProcess
from gateway.secagg import plan
from tinyfed.secagg_local import run_session

from .federation import WAIT, start_agents
from .test_secagg_federation import record_inputs, record_results, secure_gateway

SIZE = 100
COORDINATES = [(0, np.arange(0, 2 * SIZE, 2))]  # every other entry of a 200-entry tensor


def setup_for(devices: int, input_bits: int, value_bound: float) -> tuple[wire.SecAggSetup, object]:
    fp = plan(devices, SIZE, clip=1.0, input_bits=input_bits, value_bound=value_bound)
    setup = wire.SecAggSetup(bytes(16), 1, 1, devices, 2, 2, bytes(32), fp.bits, fp.step, 1.0, fp.noise,
                             COORDINATES, 1_700_000_000, fp.levels)  # fmt: skip
    return wire.decode(wire.encode(setup), expect=wire.SecAggSetup), fp


def test_each_value_is_clamped_to_the_announced_levels_and_the_rest_stays_in_the_residual() -> None:
    setup, _ = setup_for(10, 4, value_bound=2.0)
    assert setup.levels == 7 and setup.step == pytest.approx(2.0 / np.sqrt(SIZE) / 7, rel=1e-6)  # not 1.0 / 7
    delta = np.full(2 * SIZE, 0.01)
    delta[10] = 0.8  # one value far above the bound (0.2): clamped, its excess kept for later rounds
    sent, residual = SparseInput().prepare({0: delta}, setup, np.random.default_rng(0))
    assert np.abs(sent).max() == 7 and sent[5] == 7  # coordinate 10 is the sixth announced one
    clipped = delta * min(1.0, 1.0 / float(np.linalg.norm(delta)))  # the L2 clip (1.0) first, as without a bound
    restored = residual[0].astype(np.float64)
    restored[COORDINATES[0][1]] += sent * setup.step
    assert np.allclose(restored, clipped, atol=1e-6)  # what was sent plus what was kept: nothing lost
    assert residual[0][10] > 0.5  # the clamped excess waits in the residual


def test_without_a_bound_nothing_is_clamped_and_the_setup_carries_no_levels() -> None:
    setup, fp = setup_for(10, 8, value_bound=0.0)
    assert setup.levels == 0 and fp.levels == 0 and setup.step == pytest.approx(1.0 / 127, rel=1e-6)
    assert wire.SecAggSetup.Key.LEVELS not in setup.to_cbor()  # the message is as it was before the key


@pytest.mark.parametrize("sign", [1, -1])
def test_the_field_holds_the_worst_case_sum_of_bounded_inputs_exactly(sign: int) -> None:
    devices = 10
    _, fp = setup_for(devices, 4, value_bound=2.0)
    worst = {f"d{i}": np.full(SIZE, sign * fp.levels, np.int64) for i in range(devices)}  # every value at the bound
    _, result = run_session(worst, COORDINATES, fp, degree=4, threshold=3)  # type: ignore[arg-type]
    (_, values), = result.sum.values()
    assert np.array_equal(np.rint(values / fp.step).astype(np.int64), np.full(SIZE, sign * devices * fp.levels))


def test_a_bounded_federation_closes_on_the_exact_sum_of_the_clamped_inputs(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    gateway = secure_gateway(broker, tmp_path, initial_model, rounds=1, input_bits=4, value_bound=2.0)
    results = record_results(gateway)
    gateway.start()
    agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
    inputs = record_inputs(agents)
    try:
        assert gateway.finished.wait(WAIT * 3), "the bounded secure federation did not finish"
    finally:
        for agent in agents:
            agent.stop(timeout=5)
        gateway.stop()
    out = results[0]
    assert out.result is not None, out.failure
    count = len(inputs[(1, "d00")])
    fp = plan(4, count, clip=1.0, input_bits=4, value_bound=2.0)
    assert all(np.abs(inputs[(1, a.device_id)]).max() <= fp.levels == 7 for a in agents)
    got = np.concatenate([values for _, (_, values) in sorted(out.result.sum.items())])
    expected = sum(inputs[(1, a.device_id)] for a in agents)
    assert np.array_equal(np.rint(got / fp.step).astype(np.int64), expected)
