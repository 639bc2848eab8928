"""The privacy budget under secure aggregation's distributed DP (docs/secagg.md, "Distributed differential privacy").

``[privacy] mode = "distributed-dp"`` puts the federation's budget (the ledger and the accountant of
docs/privacy.md) over the secure rounds' summed Skellam noise: a round that would take the accountant past
epsilon is not opened, the log says so and ``gateway status`` shows the budget spent. Through Mosquitto, with
the real gateway and four device agents; the configuration refusals name their keys.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from edge_runtime.config import ConfigError
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.backends import default_backend
from edge_runtime.transport.broker import MosquittoProcess
from gateway.cli import privacy_lines
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import WAIT, gateway_config, start_agents
from .helpers import log_line
from .test_secagg_federation import SECAGG

pytest.importorskip("dp_accounting")

from gateway.privacy.accountant import Accountant

Z = 2.0  # [secagg] noise_multiplier: the sum's noise with the threshold's devices (3 of 4)
DELTA = 1e-5


def settings(broker: MosquittoProcess, tmp_path: Path, model: Path, **privacy: object) -> dict[str, object]:
    out = gateway_config(broker, tmp_path / "gw", model, rounds=6, min_devices=4, deadline=60.0, epochs=1,
                         learning_rate=0.05, density=0.1)  # fmt: skip
    out["secagg"] = SECAGG | {"noise_multiplier": Z}
    out["privacy"] = {"mode": "distributed-dp", "delta": DELTA, **privacy}
    return out


def test_a_distributed_dp_budget_stops_secure_rounds_before_one_would_exceed_it(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, digits: DataSplit
) -> None:
    # Each closed round is in the ledger at the z of its four devices (noise sized for three: z sqrt(4/3)); the
    # next round is accounted at Z, the least a round can carry. Epsilon between two rounds and three.
    accountant = Accountant("rdp", DELTA)
    summed = Z * math.sqrt(4 / 3)
    two = accountant.epsilon(Counter({("distributed-dp", 1.0, summed): 1, ("distributed-dp", 1.0, Z): 1}))
    three = accountant.epsilon(Counter({("distributed-dp", 1.0, summed): 2, ("distributed-dp", 1.0, Z): 1}))
    assert two < three
    epsilon = (two + three) / 2
    config = GatewayConfig.from_mapping(settings(broker, tmp_path, initial_model, epsilon=epsilon), env={})
    gateway = Gateway(config)
    assert gateway.rounds.privacy is not None and gateway.rounds.privacy.distributed
    with log_line("gateway.privacy.budget", "no training round opens") as said:
        gateway.start()
        agents = start_agents(broker, tmp_path, digits, default_backend(), 4, scheme="iid")
        try:
            assert gateway.finished.wait(WAIT * 4), "the federation did not finish on its budget"
        finally:
            for agent in agents:
                agent.stop(timeout=5)
            gateway.stop()
        assert said.is_set()
    store = GatewayStore(tmp_path / "gw" / "gateway.db")
    training = [r for r in store.rounds() if r.mode == "sync"]
    assert [r.status for r in training] == ["closed", "closed"]  # of six configured: the budget stopped them
    ledger = store.ledger()
    assert [(e.round, e.mode, e.participants) for e in ledger] == [(1, "distributed-dp", 4), (2, "distributed-dp", 4)]
    assert all(e.noise_multiplier == pytest.approx(summed) for e in ledger)
    lines = privacy_lines(config, store)
    assert lines[0].startswith("privacy: distributed-dp") and "0 rounds left" in lines[0]
    assert "  BUDGET SPENT: no training round opens (one more would exceed it)" in lines
    store.close()


def test_distributed_dp_budget_settings_that_cannot_hold_are_refused_naming_their_keys(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    base = settings(broker, tmp_path, initial_model)
    without_noise = base | {"secagg": SECAGG}
    with pytest.raises(ConfigError, match=r"\[privacy\] mode = 'distributed-dp'.*\[secagg\] noise_multiplier"):
        GatewayConfig.from_mapping(without_noise, env={})
    without_secagg = {k: v for k, v in base.items() if k != "secagg"}
    with pytest.raises(ConfigError, match=r"\[secagg\] mode = 'secagg'"):
        GatewayConfig.from_mapping(without_secagg, env={})
    central = base | {"privacy": {"mode": "central-dp"}}
    with pytest.raises(ConfigError, match=r"\[privacy\] mode = 'central-dp'.*'distributed-dp'"):
        GatewayConfig.from_mapping(central, env={})
