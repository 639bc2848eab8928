"""Differential privacy without a broker: the device's clip before compression on real updates, the settings the
accountant refuses, Poisson sampling, the noised close, the ledger, the budget, adaptive clipping, and status.

The gateway side runs ``gateway.rounds.Rounds`` with the real store, publisher and privacy budget on a fake
clock (as tests/test_rounds.py does); tests/test_privacy_gateway.py keeps the wiring through Mosquitto.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.compress import CompressionConfig, Compressor
from edge_runtime.compress.compressor import sent_norm
from edge_runtime.config import ConfigError
from edge_runtime.data.dataset import DataSplit
from edge_runtime.data.partition import iid
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import model_labels, quantize_input
from edge_runtime.model.writer import write_graph
from edge_runtime.train.trainer import TrainConfig, Trainer
from edge_runtime.wire import ValueCoding
from gateway.admission import AdmissionRules
from gateway.aggregate import update_norm
from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.policy import RoundPolicy, TaskSettings
from gateway.privacy.accountant import Accountant, rounds_left
from gateway.privacy.budget import PrivacyBudget
from gateway.privacy.mechanism import release, round_generator, update_noise_multiplier
from gateway.publisher import Publisher
from gateway.registry import Eligibility, Registry
from gateway.rounds import Rounds
from gateway.store import GatewayStore
from gateway.strategies import RoundInput, Weights
from gateway.strategies.fedavg import FedAvg

WAIT = 120.0  # an upper bound for a command that imports numpy; never a timing assertion


# -- the device: clip the delta plus its residual, before compression ----------------------------------------------
@pytest.fixture(scope="module")
def real_deltas(digits: DataSplit, digits_mlp: Graph) -> list[dict[int, np.ndarray]]:
    """Twelve real updates: the digits MLP trained from the same base on twelve devices' shares."""
    shares = iid(digits.train, 12, seed=0)
    deltas = []
    for i in range(12):
        data = digits.train.subset(shares[i])
        trainer = Trainer(digits_mlp, 0, None, TrainConfig(epochs=2, learning_rate=0.05, seed=i))
        trainer.fit(quantize_input(digits_mlp, data.x), model_labels(digits_mlp, data.y, data.classes))
        deltas.append(trainer.delta_by_tensor())
    return deltas


def _norm(values: dict[int, np.ndarray]) -> float:
    return math.sqrt(sum(float(v.astype(np.float64).ravel() @ v.astype(np.float64).ravel()) for v in values.values()))


def _received_norm(tensors: list[wire.TensorUpdate]) -> float:
    """The norm the gateway measures: the update encoded, decoded and measured by the gateway's own code."""
    update = wire.Update(bytes(16), "d", 1, bytes(32), 10, tensors)
    return update_norm(wire.decode(wire.encode(update), expect=wire.Update))


@pytest.mark.parametrize("coding", [ValueCoding.INT8, ValueCoding.TERNARY, ValueCoding.FLOAT16, ValueCoding.FLOAT32])
def test_error_feedback_cannot_push_a_sent_update_past_the_clip(
    real_deltas: list[dict[int, np.ndarray]], coding: ValueCoding
) -> None:
    clip = 0.5 * float(np.median([_norm(d) for d in real_deltas]))  # half of the updates are clipped, at least
    compressor = Compressor(CompressionConfig(density=0.05, value_coding=coding, clip=clip))
    clipped = 0
    for delta in real_deltas:
        residual_before = dict(compressor.residual)
        result = compressor.compress(delta)
        compressor.commit(result)
        assert _received_norm(result.tensors) <= clip  # as the gateway measures it, quantisation included
        assert _norm(compressor.residual) <= 2 * clip  # the residual stays bounded: it never outgrows two clips
        together = {t: d.ravel() + residual_before.get(t, 0.0) for t, d in delta.items()}
        assert result.norm == pytest.approx(_norm(together), rel=1e-5)
        assert result.below_clip is (result.norm <= clip)
        clipped += not result.below_clip
    assert clipped >= 6


def test_clipping_the_delta_alone_lets_error_feedback_send_more_than_the_clip(
    real_deltas: list[dict[int, np.ndarray]],
) -> None:
    """Why the sum is clipped: clip each delta and let error feedback add its residual, and the update sent grows
    past the bound as the residual piles up."""
    clip = 0.5 * float(np.median([_norm(d) for d in real_deltas]))
    compressor = Compressor(CompressionConfig(density=0.05))
    worst = 0.0
    for delta in real_deltas:
        factor = min(1.0, clip / _norm(delta))
        result = compressor.compress({t: d * factor for t, d in delta.items()})
        compressor.commit(result)
        worst = max(worst, sent_norm(result.tensors))
    assert worst > clip


def test_local_noise_is_added_before_sparsification_and_never_fed_back(
    real_deltas: list[dict[int, np.ndarray]],
) -> None:
    clip, noise = 0.05, 2.0
    config = CompressionConfig(density=1.0, value_coding=ValueCoding.FLOAT32, clip=clip, noise=noise)
    compressor = Compressor(config)
    delta = real_deltas[0]
    first = compressor.compress(delta)
    again = compressor.compress(delta)  # nothing committed: the same clean input, a fresh draw of noise
    factor = min(1.0, clip / _norm(delta))
    clean = np.concatenate([(delta[t].ravel() * factor) for t in sorted(delta)])
    sent = np.concatenate([t.dense() for t in sorted(first.tensors, key=lambda t: t.tensor)])
    drawn = sent - clean
    # Gaussian of stddev noise x clip, mean 0: each within 5 standard errors (the draws come from the OS's entropy).
    n = drawn.size
    assert abs(float(drawn.std()) / (noise * clip) - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(drawn.mean())) < 5 * noise * clip / math.sqrt(n)
    assert not np.array_equal(sent, np.concatenate([t.dense() for t in sorted(again.tensors, key=lambda t: t.tensor)]))
    sparse = Compressor(CompressionConfig(density=0.05, clip=clip, noise=noise)).compress(delta)
    assert _norm(sparse.residual) <= clip * (1 + 1e-5)  # clean entries not sent; the noise is never kept


# -- settings the accountant cannot account for ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("privacy", "rounds", "strategy", "named"),
    [
        ("central-dp", {"mode": "async"}, "fedavg", "[rounds] mode = 'async'"),
        ("central-dp", {"overprovision": 0.3}, "fedavg", "[rounds] overprovision = 0.3"),
        ("central-dp", {"fraction": 0.5}, "fedavg", "[rounds] fraction = 0.5"),
        ("central-dp", {"min_updates": 3}, "fedavg", "[rounds] min_updates = 3"),
        ("central-dp", {"clip_norm": 2.0}, "fedavg", "[rounds] clip_norm = 2"),
        ("central-dp", {}, "krum", "[strategy] name = 'krum'"),
    ],
)
def test_central_dp_refuses_what_the_accountant_does_not_account_for_naming_the_keys(
    privacy: str, rounds: dict[str, Any], strategy: str, named: str
) -> None:
    with pytest.raises(ConfigError) as error:
        GatewayConfig.from_mapping({"rounds": rounds, "strategy": {"name": strategy}, "privacy": {"mode": privacy}},
                                   "gw.toml", env={})  # fmt: skip
    assert f"gw.toml {named}" in str(error.value) and "gw.toml [privacy] mode = 'central-dp'" in str(error.value)


def test_local_dp_takes_async_rounds_but_not_adaptive_clipping() -> None:
    GatewayConfig.from_mapping({"rounds": {"mode": "async", "overprovision": 0.5}, "privacy": {"mode": "local-dp"}},
                               env={})  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[privacy\] adaptive_clip: adaptive clipping needs a trusted gateway"):
        GatewayConfig.from_mapping({"privacy": {"mode": "local-dp", "adaptive_clip": True}}, env={})
    with pytest.raises(ConfigError, match=r"\[rounds\] clip_norm = 2: updates under .* carry their noise"):
        GatewayConfig.from_mapping({"rounds": {"clip_norm": 2.0}, "privacy": {"mode": "local-dp"}}, env={})


def test_without_the_accountant_installed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import dp_accounting now raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"the 'privacy' extra\): pip install 'tinyfed\[privacy\]'"):
        GatewayConfig.from_mapping({"privacy": {"mode": "central-dp"}}, env={})
    GatewayConfig.from_mapping({"privacy": {"mode": "off"}}, env={})  # without DP nothing asks for it


# -- the gateway: Poisson sampling, the noised close, the ledger, the budget -----------------------------------------
class Failing(FedAvg):
    """FedAvg whose first ``failures`` server steps die (a failing disk kills the close)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures

    def step(self, weights: Weights, round_input: RoundInput) -> Weights:
        out = super().step(weights, round_input)
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        return out


def dp_rounds(
    tmp_path: Path, model: bytes, devices: int, strategy: Any = None, rounds: dict[str, Any] | None = None,
    **privacy: Any,
) -> Rounds:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "initial.tflite").write_bytes(model)
    (tmp_path / "gateway.toml").write_text(
        f'[gateway]\nstorage = "{tmp_path / "gw"}"\nmodel = "{tmp_path / "initial.tflite"}"\n'
        + "[rounds]\nmin_devices = 1\ndeadline = 60.0\n"
        + "".join(f"{k} = {v!r}\n" for k, v in (rounds or {}).items())
        + "[privacy]\n" + "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n"
                                  for k, v in {"mode": "central-dp", **privacy}.items())
    )  # fmt: skip
    config = GatewayConfig.load(tmp_path / "gateway.toml", env={})
    store = GatewayStore(config.storage / "gateway.db")
    budget = PrivacyBudget(config.privacy, store)
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0),
                         privacy=budget.rules)  # fmt: skip
    publisher = Publisher(config, store, strategy or FedAvg())
    admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
    out = Rounds(store, Registry(store), publisher, policy, admission, FakeClock(), None, None, budget)
    for i in range(devices):
        caps = wire.Capabilities(ram=1 << 20, backend="x", samples=50)
        birth = wire.Presence(f"d{i:03d}", True, 1, 0, caps)
        out.registry.observe(birth, wire.encode(birth))
    return out


def answer(rounds: Rounds, device: str, task: wire.Task, value: float = 0.01, below: bool | None = None) -> bool:
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(8, value, np.float32), 1.0)
    update = wire.Update(os.urandom(16), device, task.round, task.base_version, 40,
                         [wire.TensorUpdate(tensor, numel, np.arange(8) * 3, values)], below_clip=below)  # fmt: skip
    raw = wire.encode(update)
    decoded = wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes))
    return rounds.intake(decoded, raw, device, update_norm(decoded)).accepted


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def test_devices_are_poisson_sampled_at_the_configured_rate_and_every_task_carries_the_clip(
    tmp_path: Path, model: bytes
) -> None:
    rounds = dp_rounds(tmp_path, model, 300, sampling_rate=0.2, clip=0.25, adaptive_clip=True)
    sizes, picked = [], Counter[str]()
    for _ in range(12):
        step = rounds.step()
        assert step.opened is not None and step.opened.privacy == "central-dp" and step.opened.population == 300
        assert step.opened.target == len(step.tasks)  # every device asked is waited for
        sizes.append(len(step.tasks))
        picked.update(d for d, _ in step.tasks)
        for device, task in step.tasks:
            assert task.clip == pytest.approx(step.opened.clip) and task.clip_bit and task.noise == 0
            assert not task.report or not task.evaluate_only
            assert answer(rounds, device, task, below=True)
        assert rounds.step().ended is not None
    # Binomial(300, 0.2) per round: 60 expected, sd 6.9; a fixed-size sample would give the same count each time.
    assert len(set(sizes)) > 3 and abs(np.mean(sizes) - 60) < 4 * 6.9 / math.sqrt(12)
    assert max(picked.values()) <= 12 and len(picked) > 250  # independent draws: most devices were asked some time


def test_a_dp_round_is_not_reassigned_and_closes_at_its_deadline_with_what_arrived(
    tmp_path: Path, model: bytes
) -> None:
    rounds = dp_rounds(tmp_path, model, 20, sampling_rate=0.5)
    first = rounds.step()
    assert first.opened is not None and len(first.tasks) >= 2
    (dead, _), (alive, task) = first.tasks[0], first.tasks[1]
    death = wire.Presence(dead, False, 1, 0)
    rounds.registry.observe(death, wire.encode(death))
    assert answer(rounds, alive, task)
    assert not rounds.step().tasks  # nobody is asked in the dead device's place: a second draw is not Poisson
    assert isinstance(rounds.clock, FakeClock)
    rounds.clock.advance(61)
    closed = rounds.step().ended
    assert closed is not None and closed.status == "closed" and closed.accepted == 1
    # Nobody answers the next round at all: it still closes (noise only), it does not fail on a count.
    second = rounds.step()
    assert second.opened is not None
    rounds.clock.advance(61)
    empty = rounds.step().ended
    assert empty is not None and empty.status == "closed" and empty.accepted == 0
    assert [e.participants for e in rounds.store.ledger()] == [1, 0]


def test_the_close_releases_the_noised_sum_over_the_expected_count_and_the_ledger_records_it(
    tmp_path: Path, model: bytes
) -> None:
    rounds = dp_rounds(tmp_path, model, 40, sampling_rate=0.25, clip=0.02, noise_multiplier=0.8)
    before = rounds.publisher.master.weights()
    step = rounds.step()
    assert step.opened is not None
    for device, task in step.tasks:
        assert answer(rounds, device, task, value=0.05)  # norm 0.14: clipped to 0.02 at the gateway too
    assert rounds.step().ended is not None
    entry = rounds.store.ledger()[0]
    assert (entry.round, entry.mode, entry.population, entry.sampling_rate) == (1, "central-dp", 40, 0.25)
    assert (entry.clip, entry.noise_multiplier, entry.participants) == (pytest.approx(0.02), 0.8, len(step.tasks))
    moved = {t: w - before[t] for t, w in rounds.publisher.master.weights().items()}
    tensor = max(rounds.sizes, key=lambda t: rounds.sizes[t])
    untouched = np.setdiff1d(np.arange(rounds.sizes[tensor]), np.arange(8) * 3)
    # Where no device sent anything, only noise moved the weights: stddev z C / (q N) = 0.8 * 0.02 / 10.
    assert float(moved[tensor][untouched].std()) == pytest.approx(0.8 * 0.02 / 10, rel=0.1)
    signal = moved[tensor][np.arange(8) * 3].mean()
    assert signal == pytest.approx(len(step.tasks) * 0.02 / math.sqrt(8) / 10, abs=0.01)


def test_a_round_resumed_under_another_mode_is_not_closed_and_its_tasks_keep_the_rounds_noise(
    tmp_path: Path, model: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart with changed [privacy] settings must neither release a round opened under central DP without its
    noise, nor hand out tasks the ledger would account at the round's settings."""
    rounds = dp_rounds(tmp_path, model, 10, sampling_rate=1.0, clip=0.05, noise_multiplier=2.0)
    step = rounds.step()
    assert step.opened is not None
    for device, task in step.tasks[:3]:
        assert answer(rounds, device, task, value=0.05)
    version = rounds.publisher.version
    rounds.store.close()
    again = dp_rounds(tmp_path, model, 10, sampling_rate=1.0, clip=0.05, noise_multiplier=2.0, mode="local-dp")
    again.resume()
    assert again.open_round is not None and again.open_round.row.privacy == "central-dp"
    with caplog.at_level(logging.ERROR, logger="gateway"):
        for device, task in step.tasks[3:]:
            answer(again, device, task, value=0.05)
        assert again.step().ended is None
    assert "opened under central-dp, and [privacy] mode is now local-dp: set it back" in caplog.text
    assert again.publisher.version == version and again.store.ledger() == []  # nothing released, nothing spent
    again.store.close()
    # Resumed with a lower noise multiplier, local DP: the tasks it hands out carry the round's noise.
    local = dp_rounds(tmp_path / "local", model, 4, sampling_rate=1.0, clip=0.05, noise_multiplier=2.0,
                      mode="local-dp", rounds={"mode": "async", "concurrency": 2, "buffer_size": 4})  # fmt: skip
    first = local.step()
    assert first.opened is not None and {t.noise for _, t in first.tasks} == {2.0}
    local.store.close()
    lowered = dp_rounds(tmp_path / "local", model, 4, sampling_rate=1.0, clip=0.05, noise_multiplier=0.5,
                        mode="local-dp", rounds={"mode": "async", "concurrency": 4, "buffer_size": 4})  # fmt: skip
    lowered.resume()
    more = lowered.step()
    assert more.tasks and {t.noise for _, t in more.tasks} == {2.0}
    assert all(t.clip == pytest.approx(0.05) for _, t in more.tasks)


def test_the_store_that_holds_the_noise_secret_is_readable_by_the_gateway_alone(tmp_path: Path, model: bytes) -> None:
    rounds = dp_rounds(tmp_path, model, 10, sampling_rate=1.0)
    step = rounds.step()  # the first DP round: the secret is made and written
    assert step.opened is not None and answer(rounds, *step.tasks[0])
    db = rounds.store.path
    files = [f for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if f.exists()]
    assert len(files) == 3 and {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    rounds.store.close()
    os.chmod(db, 0o644)  # a store from before this rule, or a careless copy: narrowed again at the next start
    again = dp_rounds(tmp_path, model, 10, sampling_rate=1.0)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    again.store.close()


def test_a_close_retried_after_a_failure_releases_the_same_noise_and_writes_one_ledger_entry(
    tmp_path: Path, model: bytes
) -> None:
    clean = dp_rounds(tmp_path / "clean", model, 10, sampling_rate=1.0)
    failing = dp_rounds(tmp_path / "failing", model, 10, strategy=Failing(1), sampling_rate=1.0)
    failing.store.set_meta("privacy_secret", clean.privacy.secret.hex())  # type: ignore[union-attr]
    for r in (clean, failing):
        for device, task in r.step().tasks:
            assert answer(r, device, task)
    expected = clean.step().ended
    assert failing.step().ended is None  # the close died after the noise was drawn
    retried = failing.step().ended
    assert expected is not None and retried is not None and retried.version == expected.version
    assert [e.round for e in failing.store.ledger()] == [1]


def test_the_gateway_opens_no_round_past_the_budget_says_so_once_and_evaluates_the_last_model(
    tmp_path: Path, model: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    accountant = Accountant("rdp", 1e-5)
    event = ("central-dp", 0.5, 2.5)
    fits = rounds_left(accountant, Counter(), event, 3.0)
    assert 2 <= fits <= 30
    rounds = dp_rounds(tmp_path, model, 10, sampling_rate=0.5, noise_multiplier=2.5, epsilon=3.0)
    with caplog.at_level(logging.WARNING, logger="gateway.privacy.budget"):
        for _ in range(fits):
            step = rounds.step()
            assert step.opened is not None and step.opened.mode == "sync"
            for device, task in step.tasks:
                assert answer(rounds, device, task)
            rounds.clock.advance(61)  # type: ignore[attr-defined]
            assert rounds.step().ended is not None
        assert rounds.privacy is not None and rounds.privacy.epsilon() <= 3.0
        evaluation = rounds.step().opened
        assert evaluation is not None and evaluation.mode == "eval"  # training is over: the last model is evaluated
        for _ in range(3):
            rounds.step()
    said = [r for r in caplog.records if "one more round would exceed it" in r.getMessage()]
    assert len(said) == 1
    assert len(rounds.store.ledger()) == fits
    assert accountant.epsilon(Counter({event: fits + 1})) > 3.0


def test_adaptive_clipping_moves_the_clip_towards_the_quantile_by_the_noised_bits(tmp_path: Path, model: bytes) -> None:
    rounds = dp_rounds(tmp_path, model, 200, sampling_rate=0.5, clip=1.0, adaptive_clip=True, clip_count_stddev=1.0,
                       target_quantile=0.5, clip_learning_rate=0.2)  # fmt: skip
    clips = []
    for _ in range(4):
        step = rounds.step()
        assert step.opened is not None
        clips.append(step.opened.clip)
        for device, task in step.tasks:
            assert answer(rounds, device, task, value=0.001, below=True)  # every update is well within the clip
        assert rounds.step().ended is not None
    # Every update was within: the released share is (n / 2 + noise) / (q N) + 1/2 for n participants of q N = 100
    # expected, so the clip moves by exp(-0.2 (share - 0.5)) = exp(-0.1 n / 100), give or take the noise (sd 0.002).
    ledger = rounds.store.ledger()
    ratios = [b / a for a, b in itertools.pairwise(clips)]
    expected = [math.exp(-0.1 * e.participants / 100) for e in ledger[:3]]
    assert all(r == pytest.approx(x, abs=0.01) and r < 1 for r, x in zip(ratios, expected, strict=True)), ratios
    assert [e.next_clip for e in ledger[:3]] == pytest.approx(clips[1:])
    entry = ledger[0]
    # The bits' noise takes a share of z: the sum's own multiplier is z_update = (z^-2 - (2 s)^-2)^-1/2.
    assert entry.update_noise == pytest.approx(update_noise_multiplier(1.0, 1.0)) == pytest.approx((1 - 1 / 4) ** -0.5)


def test_a_rounds_noise_is_a_function_of_the_secret_and_the_round() -> None:
    sums = {3: np.ones(50)}
    a = release(sums, 0.0, 1.0, 10.0, 1.0, None, round_generator(b"s" * 32, 7))[0]
    b = release(sums, 0.0, 1.0, 10.0, 1.0, None, round_generator(b"s" * 32, 7))[0]
    c = release(sums, 0.0, 1.0, 10.0, 1.0, None, round_generator(b"s" * 32, 8))[0]
    np.testing.assert_array_equal(a[3], b[3])
    assert not np.array_equal(a[3], c[3])


def test_status_shows_the_mode_the_epsilon_spent_and_left_and_the_rounds_left(tmp_path: Path, model: bytes) -> None:
    rounds = dp_rounds(tmp_path, model, 30, sampling_rate=0.2, epsilon=4.0, delta=1e-4)
    for _ in range(3):
        step = rounds.step()
        for device, task in step.tasks:
            assert answer(rounds, device, task)
        rounds.clock.advance(61)  # type: ignore[attr-defined]
        assert rounds.step().ended is not None
    rounds.store.close()
    accountant = Accountant("rdp", 1e-4)
    spent = accountant.epsilon(Counter({("central-dp", 0.2, 1.0): 3}))
    left = rounds_left(accountant, Counter({("central-dp", 0.2, 1.0): 3}), ("central-dp", 0.2, 1.0), 4.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYFED_")}
    command = [sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(tmp_path / "gateway.toml")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, env=env)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "privacy: central-dp, (4, 0.0001)-DP per device" in out
    assert f"epsilon {spent:.4g} spent (rdp), {4.0 - spent:.4g} remaining, {left} rounds left" in out
    assert "ledger round 3: central-dp, population 30, q 0.2" in out
    assert sum(1 for line in out.splitlines() if " central-dp " in line and "closed" in line) == 3


def test_local_dp_tasks_carry_the_noise_and_a_device_with_no_budget_left_is_not_asked_again(
    tmp_path: Path, model: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    accountant = Accountant("rdp", 1e-5)
    fits = rounds_left(accountant, Counter(), ("local-dp", 1.0, 4.0), 5.0)  # each update: Gaussian, z / 2 = 2
    assert 2 <= fits <= 20
    rounds = dp_rounds(tmp_path, model, 3, mode="local-dp", noise_multiplier=4.0, clip=0.5, epsilon=5.0)
    with caplog.at_level(logging.WARNING, logger="gateway.privacy.budget"):
        for _ in range(fits):
            step = rounds.step()
            assert step.opened is not None and step.opened.privacy == "local-dp" and len(step.tasks) == 3
            for device, task in step.tasks:
                assert (task.clip, task.noise, task.report, task.clip_bit) == (0.5, 4.0, False, False)
                assert answer(rounds, device, task, value=3.0)  # a noisy update is not clipped at the gateway
            assert rounds.step().ended is not None
        for _ in range(3):
            assert not rounds.step().tasks  # every device has spent its budget: nobody is asked
    assert sum("have no room for another update" in r.getMessage() for r in caplog.records) == 1
    assert rounds.privacy is not None
    worst = rounds.privacy.spent()
    assert worst.epsilon == pytest.approx(accountant.epsilon(Counter({("local-dp", 1.0, 4.0): fits})))
    assert worst.epsilon <= 5.0 and worst.rounds_left == 0
    moved = rounds.publisher.master.weights()
    tensor = max(rounds.sizes, key=lambda t: rounds.sizes[t])
    assert [e.participants for e in rounds.store.ledger()] == [3] * fits
    assert np.isfinite(moved[tensor]).all()


def test_local_dp_in_async_rounds_gives_no_device_more_tasks_than_its_budget(tmp_path: Path, model: bytes) -> None:
    fits = rounds_left(Accountant("rdp", 1e-5), Counter(), ("local-dp", 1.0, 4.0), 5.0)
    rounds = dp_rounds(tmp_path, model, 4, rounds={"mode": "async", "concurrency": 2, "buffer_size": 5},
                       mode="local-dp", noise_multiplier=4.0, clip=0.5, epsilon=5.0)  # fmt: skip
    given = Counter[str]()
    for _ in range(10 * fits):
        step = rounds.step()
        given.update(d for d, _ in step.tasks)
        for device, task in step.tasks:
            assert answer(rounds, device, task)
    assert given and max(given.values()) <= fits and sum(given.values()) == 4 * fits, given


def test_the_pld_accountant_is_at_least_as_tight_as_rdp_and_both_grow_with_the_rounds() -> None:
    events = Counter({("central-dp", 0.05, 1.0): 200})
    rdp, pld = Accountant("rdp", 1e-5), Accountant("pld", 1e-5)
    assert 0 < pld.epsilon(events) <= rdp.epsilon(events)
    assert rdp.epsilon(events) < rdp.epsilon(events + Counter({("central-dp", 0.05, 1.0): 100}))
    assert rdp.epsilon(Counter()) == 0.0


def _step_costs(rounds: Rounds, steps: int) -> list[int]:
    """SQLite's VM instructions (in hundreds, its progress handler) each of ``steps`` steps of an asynchronous
    local-DP federation cost, every task given answered: a count that does not depend on the machine's load."""
    costs = []
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    for _ in range(steps):
        ticks[0] = 0
        rounds.store._db.set_progress_handler(tick, 100)
        try:
            step = rounds.step()
        finally:
            rounds.store._db.set_progress_handler(None, 100)
        costs.append(ticks[0])
        for device, task in step.tasks:
            assert answer(rounds, device, task)
    return costs


def test_a_local_dp_step_costs_the_same_however_many_tasks_were_given_before(tmp_path: Path, model: bytes) -> None:
    """Under local DP every task spends its device's budget, so the budget counted every task ever given, from
    the store, at each plan after one that gave a task: each step of an asynchronous federation read its whole
    history (66 ms at 100,000 tasks). Now the store is read once and the count kept up as tasks are given."""
    settings: dict[str, Any] = dict(rounds={"mode": "async", "concurrency": 2, "buffer_size": 3},
                                    mode="local-dp", noise_multiplier=4.0, clip=0.5, epsilon=1e6)  # fmt: skip
    fresh = dp_rounds(tmp_path / "fresh", model, 4, **settings)
    old = dp_rounds(tmp_path / "old", model, 4, **settings)
    with old.store.transaction() as db:  # a long history: a task to each of 20,000 devices since gone
        db.executemany("INSERT INTO dp_tasks VALUES (?, ?, ?, ?)",
                       ((os.urandom(16), f"gone{i}", 1, 4.0) for i in range(20_000)))  # fmt: skip
    few, many = _step_costs(fresh, 12), _step_costs(old, 12)
    # The first step reads the history once; every later one costs what it costs without any.
    assert max(many[1:]) <= max(few[1:]) + 10, (few, many)  # a read of the history is thousands
    assert rounds_left(Accountant("rdp", 1e-5), Counter(), ("local-dp", 1.0, 4.0), 1e6) > 12
    assert old.privacy is not None and fresh.privacy is not None
    assert old.privacy.epsilon() == fresh.privacy.epsilon() > 0  # the history's devices spent less than these
