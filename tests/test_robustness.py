"""The anomaly detector: scores from a round's own robust statistics, reliability across rounds, quarantine,
release, and the round machinery that records it all (the real store, publisher and rounds, a fake clock)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.data.dataset import DataSplit
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from gateway.admission import AdmissionRules
from gateway.aggregate import update_norm
from gateway.clock import FakeClock
from gateway.config import ConfigError, GatewayConfig
from gateway.policy import RoundPolicy, TaskSettings
from gateway.publisher import Publisher
from gateway.registry import Eligibility, Registry
from gateway.robustness.detector import Detector, release
from gateway.robustness.reliability import Reliability, observe, released
from gateway.robustness.scores import score_round
from gateway.rounds import Rounds
from gateway.store import GatewayStore
from gateway.strategies import ClientDelta

RNG = np.random.default_rng(3)
SIZE = 400


def honest(name: str, direction: np.ndarray, keep: int = 40) -> ClientDelta:
    """A device's sparse update: its own top coordinates of a shared direction plus its own noise (non-IID)."""
    noisy = direction + 0.6 * RNG.standard_normal(SIZE)
    idx = np.sort(np.argsort(-np.abs(noisy))[:keep])
    scale = RNG.uniform(0.6, 1.6)  # honest norms differ: more data, bigger steps
    return ClientDelta(name, 10, {0: (idx, scale * noisy[idx])})


def test_scores_flag_sign_flips_and_scaled_updates_and_leave_non_iid_honest_devices_alone() -> None:
    direction = RNG.standard_normal(SIZE)
    updates = [honest(f"h{i}", direction) for i in range(16)]
    flipped = honest("flip", direction)
    flipped.entries[0] = (flipped.entries[0][0], -flipped.entries[0][1])
    scaled = honest("big", direction)
    scaled.entries[0] = (scaled.entries[0][0], 8 * scaled.entries[0][1])
    scores = {s.device: s for s in score_round([*updates, flipped, scaled], {0: SIZE})}
    assert {d for d, s in scores.items() if s.flagged} == {"flip", "big"}
    assert "cosine" in scores["flip"].reason and scores["flip"].cosine < 0
    assert "norm" in scores["big"].reason and "x the round's median" in scores["big"].reason
    assert all(s.reason == "" for d, s in scores.items() if d.startswith("h"))


def test_reliability_quarantines_after_repeated_flags_not_after_one_and_release_restores_it() -> None:
    r = Reliability("d")
    r = observe(r, True, "cosine -0.4", 1, decay=0.7, below=0.4)
    assert r.score == pytest.approx(0.7) and not r.quarantined
    for round_ in range(2, 6):
        r = observe(r, False, "", round_, decay=0.7, below=0.4)
    assert r.score > 0.9 and not r.quarantined  # an honest device flagged once earns it back
    for round_ in (6, 7, 8):
        r = observe(r, True, "norm 9x", round_, decay=0.7, below=0.4)
    assert r.quarantined and r.since == 8 and "after" in r.reason and "norm 9x" in r.reason
    assert observe(r, False, "", 9, 0.7, 0.4).quarantined  # stays quarantined until released
    back = released(r, 9, "released by the operator")
    assert back.score == 1.0 and not back.quarantined
    never = Reliability("e")
    for round_ in range(10):
        never = observe(never, True, "x", round_, 0.7, below=0.0)
    assert never.score < 0.1 and not never.quarantined  # below = 0: never quarantined


def test_robustness_settings_are_checked_and_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"robustness.*reliability_weights needs detect"):
        GatewayConfig.from_mapping({"robustness": {"reliability_weights": True}}, env={})
    with pytest.raises(ConfigError, match=r"robustness.*decay"):
        GatewayConfig.from_mapping({"robustness": {"detect": True, "decay": 1.5}}, env={})
    with pytest.raises(ConfigError, match=r"robustness.*loss_step must be in \(0, 1\], got 0"):
        GatewayConfig.from_mapping({"robustness": {"detect": True, "loss_step": 0.0}}, env={})
    with pytest.raises(ConfigError, match=r"robustness.*dormant_share must be in \[0, 1\)"):
        GatewayConfig.from_mapping({"robustness": {"detect": True, "dormant_share": 1.0}}, env={})
    with pytest.raises(ConfigError, match=r"robustness.*bound_share must be in \[0, 1\].*got 1.5"):
        GatewayConfig.from_mapping({"robustness": {"detect": True, "bound_share": 1.5}}, env={})
    assert not GatewayConfig.from_mapping({}, env={}).robustness.detect  # off by default


# -- the round machinery -------------------------------------------------------------------------------------
DEVICES = tuple(f"d{i}" for i in range(8))
EVIL = ("d6", "d7")


def make_rounds(
    tmp_path: Path, model: bytes, strategy: str = "fedavg", norm_bound: float = 1000.0, **robustness: object
) -> Rounds:
    (tmp_path / "initial.tflite").write_bytes(model)
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"federation": "t", "storage": str(tmp_path / "gw"), "model": str(tmp_path / "initial.tflite")},
            "rounds": {"min_devices": 2, "deadline": 60.0, "norm_bound": norm_bound},
            "strategy": {"name": strategy},
            "robustness": {"detect": True, **robustness},
        },
        env={},
    )  # fmt: skip
    store = GatewayStore(config.storage / "gateway.db")
    rc = config.rounds
    policy = RoundPolicy(rc, Eligibility(), TaskSettings.from_rounds(rc, 0.0), np.random.default_rng(0))
    admission = AdmissionRules(rc.mode, rc.norm_bound, rc.max_staleness, rc.max_samples)
    rounds = Rounds(store, Registry(store), Publisher(config, store, config.make_strategy()), policy, admission,
                    FakeClock(), detector=Detector(config.robustness, store, norm_bound=rc.norm_bound))  # fmt: skip
    for name in DEVICES:
        caps = wire.Capabilities(ram=1 << 20, backend="x", samples=50)
        birth = wire.Presence(name, True, 1, 0, caps)
        rounds.registry.observe(birth, wire.encode(birth))
    return rounds


def send(rounds: Rounds, device: str, task: wire.Task, direction: np.ndarray, evil_norm: float = 0.0) -> None:
    """An honest device's update (the shared direction plus noise), or an attacker's: sign-flipped, or (with
    ``evil_norm``) the honest one scaled to that norm."""
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    noisy = direction + 0.3 * RNG.standard_normal(direction.size)
    if device in EVIL and not evil_norm:
        noisy = -noisy  # a sign flip
    idx = np.sort(np.argsort(-np.abs(noisy))[:60])
    kept = 0.01 * noisy[idx]
    if device in EVIL and evil_norm:
        kept *= evil_norm / float(np.linalg.norm(kept))
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, kept.astype(np.float32), 1.0)
    update = wire.Update(os.urandom(16), device, task.round, task.base_version, 40,
                         [wire.TensorUpdate(tensor, numel, idx, values)])  # fmt: skip
    raw = wire.encode(update)
    decoded = wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes))
    assert rounds.intake(decoded, raw, device, update_norm(decoded)).accepted


def one_round(rounds: Rounds, direction: np.ndarray, evil_norm: float = 0.0) -> tuple[set[str], int]:
    step = rounds.step()
    assert step.opened is not None
    for device, task in step.tasks:
        send(rounds, device, task, direction, evil_norm)
    ended = rounds.step().ended
    assert ended is not None and ended.status == "closed"
    return {d for d, _ in step.tasks}, ended.round


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def test_sign_flippers_are_flagged_not_counted_quarantined_and_released_by_command(
    tmp_path: Path, model: bytes
) -> None:
    rounds = make_rounds(tmp_path, model, reliability_weights=True)
    _, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    direction = RNG.standard_normal(numel)
    selected: list[set[str]] = []
    for _ in range(4):
        chosen, number = one_round(rounds, direction)
        selected.append(chosen)
        judged = {c.device: c for _, c in rounds.store.contributions(number)}
        assert set(judged) == chosen  # every update of the round is judged and recorded
        for device in chosen & set(EVIL):
            assert judged[device].flagged and not judged[device].counted and "cosine" in judged[device].reason
        for device in chosen - set(EVIL):
            assert not judged[device].flagged and judged[device].counted
        assert rounds.store.metrics(number)["excluded"] == len(chosen & set(EVIL))
    assert EVIL[0] in selected[0] and EVIL[0] not in selected[-1]  # quarantined: no longer selected
    quarantined = rounds.store.quarantined()
    assert set(quarantined) == set(EVIL) and all("reliability" in why for why in quarantined.values())
    assert rounds.registry.get(EVIL[0]) is not None
    assert "quarantined" in (Eligibility().why_not(rounds.registry.get(EVIL[0])) or "")  # type: ignore[arg-type]
    honest_reliability = {r.device: r.score for r in rounds.store.reliabilities()}
    assert all(honest_reliability[d] == 1.0 for d in DEVICES if d not in EVIL)
    # The operator releases one (the command writes the store; the running rounds read it at their next step).
    release(rounds.store, EVIL[0], "released by the operator")
    with pytest.raises(KeyError):
        release(rounds.store, "d0", "not quarantined")
    chosen, _ = one_round(rounds, direction)
    assert EVIL[0] in chosen and EVIL[1] not in chosen


def test_krum_choices_are_recorded_with_the_round(tmp_path: Path, model: bytes) -> None:
    rounds = make_rounds(tmp_path, model, strategy="krum", quarantine_below=0.0)
    _, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    _, number = one_round(rounds, RNG.standard_normal(numel))
    judged = {c.device: c for _, c in rounds.store.contributions(number)}
    picked = [d for d, c in judged.items() if c.chosen]
    assert len(picked) == 1 and picked[0] not in EVIL
    assert rounds.publisher.strategy.chosen == picked


def test_status_shows_each_flag_and_quarantine_with_its_reason_and_release_puts_a_device_back(
    tmp_path: Path, model: bytes
) -> None:
    import subprocess
    import sys

    rounds = make_rounds(tmp_path, model)
    _, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    direction = RNG.standard_normal(numel)
    for _ in range(3):
        one_round(rounds, direction)
    rounds.store.close()
    toml = tmp_path / "gateway.toml"
    storage = tmp_path / "gw"
    toml.write_text(f'[gateway]\nstorage = "{storage}"\n[robustness]\ndetect = true\n[trust]\nmode = "insecure"\n')

    def tinyfed(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tinyfed", "gateway", *args, "--config", str(toml)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    status = tinyfed("status")
    assert status.returncode == 0, status.stderr
    assert "robustness: detector on" in status.stdout
    assert "last 3 updates >= 0.9x the norm bound (1000)" in status.stdout
    clipped = tmp_path / "clipped.toml"  # updates scaled to clip_norm before scoring cannot show the bound
    clipped.write_text(toml.read_text() + "[rounds]\nclip_norm = 5.0\n")
    shown = subprocess.run([sys.executable, "-m", "tinyfed", "gateway", "status", "--config", str(clipped)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "updates at the norm bound: not judged ([rounds] clip_norm scales updates first)" in shown.stdout
    for device in EVIL:
        assert f"QUARANTINED {device} since round 3" in status.stdout
        assert f"round 1 {device}: cosine" in status.stdout and "(recorded, not counted)" in status.stdout
    wrong = tinyfed("release", "d0")
    assert wrong.returncode == 2 and "'d0' is not quarantined" in wrong.stderr and "d6, d7" in wrong.stderr
    done = tinyfed("release", "d6")
    assert done.returncode == 0, done.stderr
    after = tinyfed("status").stdout
    assert "QUARANTINED d6" not in after and "QUARANTINED d7" in after


def test_the_benchmark_attacks_do_what_they_say(digits_mlp: Graph, digits: DataSplit) -> None:
    """bench/byzantine.py's attackers, against an honest twin trained on the same data with the same seed."""
    from bench.byzantine import TARGET, Attack, Attacker, trigger
    from edge_runtime.model.backends import default_backend
    from tinyfed.population import SimulatedDevice

    backend = default_backend()
    data = digits.train.subset(np.arange(60), "d")
    spec = {t: int(np.prod(s)) for t, s in ((k.tensor, k.shape) for k in _trainable(digits_mlp))}
    task = wire.Task(os.urandom(16), 1, bytes(32), 1, 0.05, 0.05, 2**40)
    high = float(digits.train.x.max())

    def sent(device: SimulatedDevice) -> np.ndarray:
        update = wire.decode(device.answer(task, digits_mlp, spec, 0, backend), expect=wire.Update, spec=spec)
        return np.concatenate([t.dense().astype(np.float64) for t in sorted(update.tensors, key=lambda t: t.tensor)])

    honest = sent(SimulatedDevice("h", data, 5))
    flipped = sent(Attacker("a", data, 5, Attack("sign_flip", 5.0, high)))
    np.testing.assert_allclose(flipped, -honest, rtol=1e-2, atol=1e-3 * np.abs(honest).max())
    scaled = sent(Attacker("a", data, 5, Attack("scale", 5.0, high)))
    assert np.linalg.norm(scaled) == pytest.approx(0.95 * 5.0, rel=1e-4)
    assert (scaled != 0).sum() == (honest != 0).sum()
    noise = sent(Attacker("a", data, 5, Attack("noise", 5.0, high)))
    assert np.linalg.norm(noise) == pytest.approx(0.95 * 5.0, rel=1e-4) and abs(np.corrcoef(noise, honest)[0, 1]) < 0.5
    labels = Attacker("a", data, 5, Attack("label_flip", 5.0, high)).data
    np.testing.assert_array_equal(labels.y, len(data.classes) - 1 - data.y)
    poisoned = Attacker("a", data, 5, Attack("backdoor", 5.0, high)).data
    assert len(poisoned) == 2 * len(data) and (poisoned.y[len(data) :] == TARGET).all()
    np.testing.assert_array_equal(poisoned.x[len(data) :], trigger(data.x, high))
    assert (trigger(data.x, high).reshape(len(data), -1)[:, 0] == high).all()


def _trainable(graph: Graph) -> list[wire.TrainableTensor]:
    from edge_runtime.train.tail import Tail
    from edge_runtime.train.trainer import cut_for_last_layers

    cut = cut_for_last_layers(graph, 0)
    out = []
    for i, layer in Tail.from_graph(graph, cut).trainable():
        op = graph.operators[cut + i]
        out += [wire.TrainableTensor(op.inputs[1], tuple(layer.weight.shape)),
                wire.TrainableTensor(op.inputs[2], tuple(layer.bias.shape))]  # fmt: skip
    return out


def test_the_validation_loss_change_flags_an_update_that_hurts_the_hubs_set(
    tmp_path: Path, digits_mlp: Graph, digits: DataSplit
) -> None:
    from gateway.robustness.validation import ValidationLoss, from_config

    model = write_graph(digits_mlp)
    scorer = ValidationLoss(model, 0, digits.test.x[:200], digits.test.y[:200], "test")
    base = scorer.master.weights()
    tensor = max(base, key=lambda t: base[t].size)
    zero = ClientDelta("zero", 10, {tensor: (np.arange(5), np.zeros(5))})
    wrecker = ClientDelta("wreck", 10, {t: (np.arange(w.size), 3.0 * RNG.standard_normal(w.size)) for t, w in
                                        base.items()})  # fmt: skip
    changes = scorer.changes(base, [zero, wrecker])
    assert changes[0] == pytest.approx(0.0, abs=1e-9) and changes[1] > 0.5
    direction = RNG.standard_normal(SIZE)
    updates = [honest(f"h{i}", direction) for i in range(10)]
    losses = [0.01 * RNG.standard_normal() for _ in updates[:-1]] + [0.8]
    flagged = [s for s in score_round(updates, {0: SIZE}, loss_changes=losses) if s.flagged]
    assert [s.device for s in flagged] == ["h9"] and "validation loss" in flagged[0].reason
    # Configuration: a missing file is named.
    (tmp_path / "m.tflite").write_bytes(model)
    settings = {"gateway": {"model": str(tmp_path / "m.tflite"), "trainable_layers": 1},
                "robustness": {"detect": True, "validation": str(tmp_path / "none.npz")}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"\[robustness\] validation .*none.npz"):
        from_config(GatewayConfig.from_mapping(settings, env={}), model)


def test_the_validation_set_is_scored_behind_a_frozen_backbone_run_by_the_int8_executor(
    tmp_path: Path, digits_mlp: Graph, digits: DataSplit
) -> None:
    """trainable_layers = 1: the hub's samples go through the frozen backbone once, in the gateway's numpy int8
    executor; the tail's inputs are what a device's interpreter gives its trainer (within 1 LSB), and so is the
    loss on the set."""
    from edge_runtime.model.backends import default_backend
    from edge_runtime.model.info import quantize_input
    from edge_runtime.train.trainer import Trainer
    from gateway.robustness.validation import from_config

    model = write_graph(digits_mlp)
    (tmp_path / "m.tflite").write_bytes(model)
    np.savez(tmp_path / "val.npz", x=digits.test.x[:120], y=digits.test.y[:120])
    settings = {"gateway": {"model": str(tmp_path / "m.tflite"), "trainable_layers": 1},
                "robustness": {"detect": True, "validation": str(tmp_path / "val.npz")}}  # fmt: skip
    scorer = from_config(GatewayConfig.from_mapping(settings, env={}), model)
    assert scorer is not None and scorer.master.cut > 0
    device = Trainer(digits_mlp, scorer.master.cut, default_backend())
    expected = device.features(quantize_input(digits_mlp, digits.test.x[:120]))
    q = device.cut_tensor.require_int8()
    assert scorer.features.shape == expected.shape and expected.any()
    assert np.abs(scorer.features - expected).max() <= float(q.scale[0]) * 1.01  # within 1 LSB
    base = scorer.master.weights()
    assert set(base) == set(scorer.master.sizes) and len(base) == 2  # the last layer's weight and bias only
    wrecker = ClientDelta("wreck", 10, {t: (np.arange(w.size), 3.0 * RNG.standard_normal(w.size)) for t, w in
                                        base.items()})  # fmt: skip
    zero = ClientDelta("zero", 10, {t: (np.arange(3), np.zeros(3)) for t in base})
    changes = scorer.changes(base, [zero, wrecker])
    assert changes[0] == pytest.approx(0.0, abs=1e-9) and changes[1] > 0.5
    probs = device.tail.forward(expected, training=False)  # the device's own view of the set's loss
    own = float(-np.log(np.maximum(probs[np.arange(120), digits.test.y[:120]], 1e-7)).mean())
    assert scorer.loss(base) == pytest.approx(own, rel=0.02)


def test_the_history_sketch_keeps_cosines_and_a_small_model_exactly() -> None:
    from gateway.robustness.history import History

    small = History({0: 300, 1: 10}, dim=4096)
    assert small.exact and small.dim == 310
    a = ClientDelta("a", 1, {0: (np.array([1, 5, 9]), np.array([3.0, 0.0, 4.0])), 1: (np.array([2]), np.array([0.0]))})
    np.testing.assert_allclose(small.sketch(a)[[1, 5, 9]], [0.6, 0.0, 0.8])  # unit norm, at its coordinates
    big = History({0: 200_000}, dim=4096)
    assert not big.exact and big.dim == 4096
    for _ in range(5):  # two sparse updates sharing half their coordinates: the sketch's cosine is the true one's
        idx = np.sort(RNG.choice(200_000, 400, replace=False))
        x, y = RNG.standard_normal(400), RNG.standard_normal(400)
        y[:200] = x[:200] + 0.3 * RNG.standard_normal(200)
        u, v = ClientDelta("u", 1, {0: (idx, x)}), ClientDelta("v", 1, {0: (idx, y)})
        true = float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
        assert float(big.sketch(u) @ big.sketch(v)) == pytest.approx(true, abs=0.1)


def drifting_round(
    rng: np.random.Generator, direction: np.ndarray, biases: dict[str, np.ndarray], away: set[str]
) -> list[ClientDelta]:
    """One round: every device its own persistent bias (non-IID) and noise, plus the shared direction, except a
    device in ``away``, which goes its own way only: one round's update alone barely tells them apart."""
    out = []
    for name, bias in biases.items():
        pull = 0.0 if name in away else 1.0
        noisy = pull * direction + bias + 0.8 * rng.standard_normal(SIZE)
        idx = np.sort(np.argsort(-np.abs(noisy))[:40])
        out.append(ClientDelta(name, 10, {0: (idx, noisy[idx])}))
    return out


def test_the_history_flags_devices_that_keep_pointing_away_and_spares_honest_non_iid_ones() -> None:
    from gateway.robustness.history import History

    rng = np.random.default_rng(18)
    direction = rng.standard_normal(SIZE)
    biases = {f"h{i}": 1.2 * rng.standard_normal(SIZE) for i in range(16)} | {
        f"x{i}": 1.2 * rng.standard_normal(SIZE) for i in range(4)}  # fmt: skip
    away = {"x0", "x1", "x2", "x3"}
    history = History({0: SIZE}, dim=256, decay=0.8)  # dim < SIZE: the sketch, not the exact vectors
    missed = 0  # attackers' updates the per-round scores let through
    for round_ in range(1, 9):
        updates = drifting_round(rng, direction, biases, away)
        missed += len(away - {s.device for s in score_round(updates, {0: SIZE}) if s.flagged})
        assert history.add_round(round_, updates, {u.device for u in updates} - away)
        scores = {h.device: h for h in history.score([u.device for u in updates], 3.0, 0.25, 3)}
        if round_ < 3:  # min_history: nobody judged on one or two rounds
            assert not any(h.flagged for h in scores.values())
    assert missed >= 8, missed  # the per-round scores alone let a quarter of their updates through, or more
    assert {d for d, h in scores.items() if h.flagged} == away
    assert all("point away from the federation's" in scores[d].reason for d in away)
    assert all(scores[d].cosine > scores[x].cosine for d in biases if d not in away for x in away)
    assert not history.add_round(8, updates, set())  # a re-judged round is not folded in twice
    history.forget("x0")  # released by the operator: a new history, not judged until min_history rounds again
    assert "x0" not in {h.device for h in history.score(["x0"], 3.0, 0.0, 3) if h.flagged}


def test_history_flags_quarantine_and_are_recorded_with_their_reason(tmp_path: Path, model: bytes) -> None:
    """Through the real rounds and store: the per-round cosine turned off (min_cosine -1), so only the history
    can catch the sign flippers, from its third round on."""
    rounds = make_rounds(tmp_path, model, min_cosine=-1.0)
    _, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    direction = RNG.standard_normal(numel)
    for expected in range(1, 6):
        chosen, number = one_round(rounds, direction)
        judged = {c.device: c for _, c in rounds.store.contributions(number)}
        for device in chosen & set(EVIL):
            assert judged[device].flagged == (number >= 3), (number, judged[device])
            assert ("point away from the federation's" in judged[device].reason) == (number >= 3)
            assert "cosine with the round's coordinate median" not in judged[device].reason
        assert not any(judged[d].flagged for d in chosen - set(EVIL)) and number == expected
    assert set(rounds.store.quarantined()) == set(EVIL)
    assert all(r.score == 1.0 for r in rounds.store.reliabilities() if r.device not in EVIL)


def test_clipping_to_the_rounds_median_norm_scales_a_large_update_once(tmp_path: Path) -> None:
    from gateway.aggregate import StreamingAggregate
    from gateway.robustness.settings import RobustnessSection

    store = GatewayStore(tmp_path / "gateway.db")
    settings = RobustnessSection(detect=True, clip_to_median=1.0, norm_ratio=10.0, history=False)
    detector = Detector(settings, store)
    aggregate = StreamingAggregate({0: SIZE}, keep_updates=True)
    idx = np.arange(0, SIZE, 10)
    v = RNG.standard_normal(idx.size)
    for name, factor in (("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0), ("e", 1.0), ("big", 3.0)):
        values = wire.CodedValues(wire.ValueCoding.FLOAT32, (factor * v).astype(np.float32), 1.0)
        update = wire.Update(os.urandom(16), name, 1, bytes(32), 10, [wire.TensorUpdate(0, SIZE, idx, values)])
        aggregate.add(wire.decode(wire.encode(update), expect=wire.Update, spec={0: SIZE}))
    verdict = detector.judge(1, aggregate)
    assert verdict.clipped == {"big": pytest.approx(1 / 3)} and not verdict.excluded
    row = {c.device: c for c in verdict.contributions}["big"]
    assert "clipped to" in row.reason and row.counted and not row.flagged
    detector.judge(1, aggregate)  # a retried close: not clipped twice
    np.testing.assert_allclose(aggregate.round_input().mean[0][idx], v.astype(np.float32), rtol=1e-5)
    assert RobustnessSection(detect=True, clip_to_median=0.0).clip_to_median == 0.0
    with pytest.raises(ValueError, match="clip_to_median"):
        RobustnessSection(detect=True, clip_to_median=0.5)
    store.close()


def test_the_dormant_share_flags_a_backdoor_trigger_and_spares_honest_non_iid_devices(
    digits_mlp: Graph, digits: DataSplit
) -> None:
    """Real training on digits split by Dirichlet 0.5, as the benchmark's first round: two backdoor attackers
    (bench/byzantine.py's, trigger on the first pixels, which clean digits leave at zero) among ten honest
    non-IID devices, five splits. The round's norm, cosine and loss-change scores do not single the attackers
    out; the share of mass on weights the hub's 300 samples never drive does, and spares every honest device."""
    from bench.byzantine import Attack, Attacker
    from edge_runtime.data import partition
    from edge_runtime.model.backends import default_backend
    from gateway.robustness.validation import ValidationLoss, dormant_shares
    from tinyfed.population import SimulatedDevice

    backend = default_backend()
    model = write_graph(digits_mlp)
    hub = np.random.default_rng(0).permutation(len(digits.train))[:300]
    scorer = ValidationLoss(model, 0, digits.train.x[hub], digits.train.y[hub], "test")
    base = scorer.master.weights()
    masks = scorer.dormant(base)
    assert masks and all(m.dtype == bool for m in masks.values()) and sum(int(m.sum()) for m in masks.values()) > 0
    spec = {t: int(np.prod(s)) for t, s in ((k.tensor, k.shape) for k in _trainable(digits_mlp))}
    task = wire.Task(os.urandom(16), 1, bytes(32), 5, 0.05, 0.01, 2**40)
    high = float(digits.train.x.max())
    missed_without = 0
    for seed in range(5):
        shares = partition.dirichlet(digits.train, 12, 0.5, seed=seed, min_size=1)
        devices = [
            Attacker(f"a{i}", digits.train.subset(shares[i], "d"), seed, Attack("backdoor", 5.0, high))
            if i < 2 else SimulatedDevice(f"h{i}", digits.train.subset(shares[i], "d"), seed)
            for i in range(12)
        ]  # fmt: skip
        updates = []
        for device in devices:
            update = wire.decode(device.answer(task, digits_mlp, spec, 0, backend), expect=wire.Update, spec=spec)
            updates.append(ClientDelta(device.name, update.samples, {
                t.tensor: (t.indices.astype(np.int64), t.values.decode().astype(np.float64)) for t in update.tensors}))
        losses = scorer.changes(base, updates)
        without = score_round(updates, spec, loss_changes=losses)
        missed_without += sum(1 for s in without if s.device.startswith("a") and not s.flagged)
        dormant = dormant_shares(masks, updates)
        scores = {s.device: s for s in score_round(updates, spec, loss_changes=losses, dormant=dormant,
                                                   dormant_share=0.05)}  # fmt: skip
        flagged = {d for d, s in scores.items() if s.flagged}
        assert {"a0", "a1"} <= flagged, (seed, {d: round(s.dormant or 0, 3) for d, s in scores.items()})
        assert not {d for d in flagged if d.startswith("h") and "never drives" in scores[d].reason}, (seed, dormant)
        assert all("never drives" in scores[a].reason for a in ("a0", "a1"))
    assert missed_without >= 8, missed_without  # without it, most of the attackers' updates pass


def test_dormant_weights_are_those_whose_input_is_zero_on_every_validation_sample() -> None:
    """A convolution model with one channel silent on the whole validation set: exactly that channel's weights
    of the first layer are dormant (every filter, every tap), and an update's share counts only them."""
    from edge_runtime.train.build import build_model
    from gateway.robustness.validation import ValidationLoss, dormant_shares

    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 128, 9)).astype(np.float32)
    x[:, :, 3] = 0.0
    graph = build_model("cnn1d", x, [str(i) for i in range(6)], seed=0)
    scorer = ValidationLoss(write_graph(graph), 0, x, rng.integers(0, 6, 60), "test")
    masks = scorer.dormant(scorer.master.weights())
    first = next(t for t, (layer, kind) in scorer.master.slots.items() if kind == "weight" and layer.weight.ndim == 4)
    shape = scorer.master.slots[first][0].weight.shape  # [out, 1, taps, channels]
    expected = np.zeros(shape, bool)
    expected[..., 3] = True
    np.testing.assert_array_equal(masks[first], expected.reshape(-1))
    assert sum(int(m.sum()) for t, m in masks.items() if t != first) == 0  # ReLU units alive on random data
    silent = np.flatnonzero(masks[first])[:4]
    loud = np.flatnonzero(~masks[first])[:4]
    update = ClientDelta("u", 1, {first: (np.sort(np.concatenate([silent, loud])), np.ones(8))})
    assert dormant_shares(masks, [update, ClientDelta("e", 1, {})]) == [pytest.approx(0.5), 0.0]


def _run(attack: str, seed: int, accuracy: float, tpr: float = 1.0, fpr: float = 0.0) -> dict[str, Any]:
    share = 0.0 if attack == "none" else 0.2
    run = {"data": "har", "strategy": "detector", "attack": attack, "share": share, "seed": seed,
           "accuracy": accuracy, "tpr": float("nan") if attack == "none" else tpr, "fpr": fpr}  # fmt: skip
    return run


def test_the_benchmark_judges_the_goal_on_means_over_seeds_paired_by_seed() -> None:
    """Two seeds: one whose worst attack falls 4 points (alone: not met), one that gains 1 point; the mean drop is
    1.5 points (met), each seed's drop is shown, and a seed that a cell lacks is left out of every cell."""
    from bench.byzantine import ATTACKS, cells, goal, judge, summarise

    runs = [_run("none", 0, 0.80), _run("none", 1, 0.70), _run("none", 2, 0.10)]
    for attack in ATTACKS:
        low = 0.76 if attack == "scale" else 0.79
        runs += [_run(attack, 0, low, fpr=0.0), _run(attack, 1, 0.71, fpr=0.1 if attack == "noise" else 0.0)]
    runs[-1]["backdoor"] = 0.3  # the last attack is the backdoor, seed 1
    runs[-2]["backdoor"] = 0.1  # seed 0
    verdict = judge(cells(runs), "har", "detector", 0.2)
    assert verdict is not None
    assert verdict.seeds == {0, 1}  # seed 2 ran attack-free only
    assert verdict.attack == "scale" and verdict.worst.mean() == pytest.approx(0.735)
    assert verdict.drop == pytest.approx(1.5) and verdict.drops == pytest.approx([4.0, -1.0])
    assert verdict.fpr == pytest.approx(0.05) and verdict.tpr == 1.0 and verdict.backdoor == pytest.approx(0.2)
    assert verdict.met
    assert not judge(cells([r for r in runs if r["seed"] == 0]), "har", "detector", 0.2).met  # type: ignore[union-attr]
    row = goal(runs).splitlines()[-1]
    assert "| 2 | 0.750 ± 0.071 | 0.735 ± 0.035 (scale) | 1.5 (-1.0 to 4.0) | 1.00 | 0.050 | 0.20 | yes |" in row
    figures = summarise(runs)
    assert figures["har_detector_none_0_accuracy"] == pytest.approx(0.5333, abs=1e-4)  # the cell: all three seeds
    assert figures["har_detector_none_0_seeds"] == 3.0
    assert figures["har_detector_20_drop_points"] == pytest.approx(1.5) and figures["har_detector_20_met"] == 1.0
    # an honest device more quarantined on average breaks the goal however accurate the model stays
    worse = [r | {"fpr": 0.12} if r["attack"] == "noise" and r["seed"] == 0 else r for r in runs]
    assert not judge(cells(worse), "har", "detector", 0.2).met  # type: ignore[union-attr]


def test_the_benchmark_reads_runs_saved_before_seeds_as_seed_zero_and_shows_one_seed_without_a_spread() -> None:
    from bench.byzantine import ATTACKS, goal, run_key

    runs = [_run("none", 0, 0.80)] + [_run(a, 0, 0.79) for a in ATTACKS]
    for r in runs:
        del r["seed"]
    assert run_key(runs[0]) == ("har", "detector", "none", 0.0, 0)
    row = goal(runs).splitlines()[-1]
    assert "| 1 | 0.800 | 0.790 (sign_flip) | 1.0 |" in row and "±" not in row


def test_the_benchmark_draws_other_attackers_per_seed_and_keeps_seed_zeros(tmp_path: Path) -> None:
    """Seed 0 keeps the first devices by name (the saved single-seed grids' choice); other seeds draw others. The
    seeds grid runs each data set's best configuration attack-free and under every attack per seed, and a
    resumed file keeps a run only for its own seed and data set's spec."""
    import json
    from dataclasses import replace

    import bench.byzantine as byz

    keys = list(range(1, 22))
    assert byz.attacker_keys(keys, 0.2, 0) == [1, 2, 3, 4]
    drawn = [byz.attacker_keys(keys, 0.2, s) for s in (1, 2, 3)]
    assert all(len(d) == 4 and set(d) <= set(keys) for d in drawn) and drawn[0] != drawn[1] != drawn[2]
    assert byz.attacker_keys(keys, 0.2, 1) == drawn[0]  # the same seed, the same attackers
    jobs = byz.seed_grid(2)
    assert len(jobs) == 2 * 2 * (1 + len(byz.ATTACKS))
    assert {j[2] for j in jobs if j[0] == "har"} == {byz.GOAL["har"]}
    assert [j[1].seed for j in jobs if j[0] == "digits"][:6] == [0] * 6  # whole seeds first
    digits = _run("none", 0, 0.9) | {"data": "digits", "strategy": "detector_val"}
    har = {"strategy": byz.GOAL["har"]}
    details = {"specs": byz._specs(), "norm_bound": byz.NORM_BOUND, "strategies": byz.STRATEGIES,
               "hub_samples": byz.HUB_SAMPLES, "detector_revision": byz.DETECTOR_REVISION,
               "runs": [_run("none", 1, 0.8) | har, _run("none", 7, 0.8) | har, digits]}  # fmt: skip
    saved = {"when": "then", "details": details}
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(saved, default=float))
    kept = byz.reusable(path, jobs)  # seed 7 is not in a 2-seed grid
    assert [(r["data"], r["seed"], r["kept"]) for r in kept] == [("har", 1, "then"), ("digits", 0, "then")]
    details["specs"]["har"]["density"] = 0.5  # HAR's spec changed: its runs go, digits' stay
    path.write_text(json.dumps(saved, default=float))
    assert [r["data"] for r in byz.reusable(path, jobs)] == ["digits"]
    seeded = ("har", replace(byz.HAR, seed=3), "detector", "none", 0.0)
    assert byz.job_key(seeded) == ("har", "detector", "none", 0.0, 3)


def test_the_swing_table_reads_the_final_round_and_the_spread_over_the_last_half() -> None:
    from bench.byzantine import swing_row

    steady = [0.5, 0.6, 0.8, 0.8, 0.8, 0.8]  # learns, then holds: no spread over rounds 4-6
    swinging = [0.5, 0.6, 0.7, 0.9, 0.7, 0.9]  # rounds 4-6: 0.9, 0.7, 0.9 (population std 0.0943)
    row = swing_row(0.1, [steady, swinging], 1)
    assert row == "| 0.1 | 2 | 0.850 (0.800-0.900) | 0.047 (0.094) | 1 of 2 |"


def at_norm(update: ClientDelta, norm: float) -> ClientDelta:
    idx, values = update.entries[0]
    return ClientDelta(update.device, update.samples, {0: (idx, values * (norm / float(np.linalg.norm(values))))})


def test_persistence_flags_a_run_of_updates_at_the_norm_bound_and_dormant_mass_that_adds_up() -> None:
    """Round after round the scalers sit at 0.95 of the bound in a round whose honest norms spread widely on the
    low side: the round's norm score lets them through (z under 3); their run at the bound does not. An honest
    device that reaches the bound once, and one that writes a dormant share now and then, are not flagged."""
    from gateway.robustness.persistence import Persistence

    rng = np.random.default_rng(7)
    direction = rng.standard_normal(SIZE)
    memory = Persistence(bound=5.0, bound_share=0.9, rounds=3, decay=0.8, dormant_share=0.05)
    dormant_shares = {"bd": [0.01, 0.03, 0.02, 0.02, 0.01], "rare": [0.0, 0.04, 0.0, 0.0, 0.0]}
    for round_ in range(1, 6):
        # honest norms from 0.05 to 1.6: a wide spread of log-norms; an honest device at the bound in round 2 only
        updates = [at_norm(honest(f"h{i}", direction), 0.05 * 32 ** (i / 23)) for i in range(24)]
        updates += [at_norm(honest(name, direction), 4.75) for name in ("s0", "s1", "s2")]
        updates.append(at_norm(honest("once", direction), 4.8 if round_ == 2 else 1.0))
        updates += [at_norm(honest(name, direction), 0.3) for name in dormant_shares]
        scores = score_round(updates, {0: SIZE})
        assert not any(s.flagged for s in scores if s.device.startswith("s")), "the round's norm score alone"
        scores = [replace(s, dormant=dormant_shares.get(s.device, [0.0] * 5)[round_ - 1]) for s in scores]
        assert memory.add_round(round_, scores)
        judged = {p.device: p for p in memory.judge(scores)}
        flagged = {d for d, p in judged.items() if p.flagged}
        scalers = {"s0", "s1", "s2"} if round_ >= 3 else set()
        dormant = {"bd"} if round_ >= 3 else set()  # 0.01, then 0.038, then 0.0504 > 0.05, ...
        assert flagged == scalers | dormant, (round_, flagged)
        for name in scalers:
            assert f"its last {round_} updates were all at 0.9x the norm bound (5)" in judged[name].reason
        if dormant:
            assert "its dormant shares add up to" in judged["bd"].reason
    assert not memory.add_round(5, scores)  # a re-judged round is not added twice
    memory.forget("s0")  # released: a new run
    assert memory.at_bound.get("s0") is None and memory.at_bound["s1"] == 5
    off = Persistence(bound=5.0, bound_share=0.0, rounds=1, decay=0.8, dormant_share=0.0)
    off.add_round(1, scores)
    assert not any(p.flagged for p in off.judge(scores))
    # A bound that binds most devices (an operator who set it at the devices' DP clip): nobody's run grows.
    clipped = Persistence(bound=5.0, bound_share=0.9, rounds=1, decay=0.8, dormant_share=0.05)
    everyone = [replace(s, norm=4.9 if i % 4 else 1.0, dormant=0.0) for i, s in enumerate(scores)]
    clipped.add_round(1, everyone)
    assert not any(p.flagged for p in clipped.judge(everyone)) and not any(clipped.at_bound.values())
    # ... while the dormant sums still add up in such a round: only the at-bound run pauses
    writer = everyone[0].device
    again = [replace(s, dormant=0.06 if s.device == writer else 0.0) for s in everyone]
    clipped.add_round(2, again)
    assert clipped.dormant[writer] == pytest.approx(0.06) and not any(clipped.at_bound.values())


def test_updates_kept_at_the_norm_bound_are_flagged_from_the_third_round_and_quarantined(
    tmp_path: Path, model: bytes
) -> None:
    """Through the real rounds and store: two devices send updates at 0.95 of [rounds] norm_bound, with the
    round's norm score loosened (norm_ratio 100) so only their run at the bound can give them away."""
    rounds = make_rounds(tmp_path, model, norm_bound=5.0, norm_ratio=100.0)
    _, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    direction = RNG.standard_normal(numel)
    for expected in range(1, 6):
        chosen, number = one_round(rounds, direction, evil_norm=4.75)
        judged = {c.device: c for _, c in rounds.store.contributions(number)}
        for device in chosen & set(EVIL):
            assert judged[device].flagged == (number >= 3), (number, judged[device])
            assert ("x the norm bound (5)" in judged[device].reason) == (number >= 3)
        assert not any(judged[d].flagged for d in chosen - set(EVIL)) and number == expected
    quarantined = rounds.store.quarantined()
    assert set(quarantined) == set(EVIL) and all("norm bound" in why for why in quarantined.values())


class _CountedRecords(dict[Any, Any]):
    """A table of records by device, counting how many are read by walking it."""

    read = 0

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        for item in super().items():
            type(self).read += 1
            yield item


def test_a_step_asks_who_is_quarantined_without_reading_every_devices_record(tmp_path: Path) -> None:
    """Each step of the round thread asks the detector who is quarantined and tells the registry: the store's
    answer read every device's reliability, and both walked every device ever seen (3.9 ms a step at 10,000)."""
    store = GatewayStore(tmp_path / "gateway.db")
    settings = GatewayConfig.from_mapping({"robustness": {"detect": True}}, env={}).robustness
    store.stage_presence = True  # one commit for the births below, not one each

    def add(names: list[str], quarantined: bool) -> None:
        with store.transaction() as db:
            store._write_robustness(db, 1, [], [Reliability(n, 0.1 if quarantined else 0.9, 3, 3 if quarantined else 0,
                                                            quarantined, "flagged" if quarantined else "", 1)
                                                for n in names])  # fmt: skip
        for n in names:
            birth = wire.Presence(n, True, 1, 0, wire.Capabilities(ram=1 << 20, backend="x", samples=50))
            registry.observe(birth, wire.encode(birth))
        store.commit_pending()

    def step(detector: Detector) -> tuple[int, int]:
        """(SQLite VM steps in hundreds, records read by walking) of one step's question."""
        ticks = [0]

        def tick() -> int:
            ticks[0] += 1
            return 0

        _CountedRecords.read = 0
        store._db.set_progress_handler(tick, 100)
        try:
            registry.set_quarantined(detector.quarantined())
        finally:
            store._db.set_progress_handler(None, 100)
        return ticks[0], _CountedRecords.read

    def counted(detector: Detector) -> Detector:
        detector._reliability = _CountedRecords(detector._reliability)
        registry._devices = _CountedRecords(registry._devices)
        return detector

    try:
        registry = Registry(store)
        add(["q0", "q1", "q2"], quarantined=True)
        few = step(counted(Detector(settings, store)))
        add([f"d{i}" for i in range(5000)], quarantined=False)
        detector = counted(Detector(settings, store))
        many = step(detector)
        assert many[0] <= few[0] + 1 and many[1] == few[1] == 0, (few, many)  # a walk would read 5,003 each
        # What it answers is unchanged: the quarantined are out, a release by command puts one back at once.
        assert {r.device for r in registry.all() if r.quarantined} == {"q0", "q1", "q2"}
        release(store, "q1", "fixed its data")
        step(detector)
        assert {r.device for r in registry.all() if r.quarantined} == {"q0", "q2"}
        assert detector.weight("q1") == 1.0 or not settings.reliability_weights
        # A device quarantined before its first birth is out once it is born.
        add(["late"], quarantined=False)
        with store.transaction() as db:
            store._write_robustness(db, 2, [], [Reliability("ghost", 0.1, 3, 3, True, "flagged", 2)])
        step(detector)
        birth = wire.Presence("ghost", True, 1, 0, wire.Capabilities(ram=1 << 20, backend="x", samples=50))
        registry.observe(birth, wire.encode(birth))
        step(detector)
        assert {r.device for r in registry.all() if r.quarantined} == {"q0", "q2", "ghost"}
    finally:
        store.close()
