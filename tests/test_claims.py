"""An enrolled device that lies about itself moves the model by no more than an honest device could.

Each test runs real rounds (tests/test_rounds.py's world: real store, real publisher, real int8 model, a fake
clock) twice: once with every device honest, once with one device lying in one field, and compares what
came out: the weights of the new version, its re-quantisation ranges, the stored evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from gateway.aggregate import update_norm
from gateway.config import GatewayConfig
from gateway.registry import Registry
from gateway.rounds import Rounds
from gateway.strategies.fedavg import FedAvg

from .test_rounds import born, make_rounds


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def send(
    rounds: Rounds, device: str, task: wire.Task, samples: int = 40, value: float = 0.01, **extra: object
) -> bool:
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    values = wire.CodedValues(wire.ValueCoding.FLOAT32, np.full(8, value, np.float32), 1.0)
    update = wire.Update(os.urandom(16), device, task.round, task.base_version, samples,
                         [wire.TensorUpdate(tensor, numel, np.arange(8) * 3, values)], **extra)  # type: ignore[arg-type]  # fmt: skip
    raw = wire.encode(update)
    decoded = wire.decode(raw, expect=wire.Update, spec=dict(rounds.sizes))
    return rounds.intake(decoded, raw, device, update_norm(decoded)).accepted


def one_round(tmp_path: Path, model: bytes, lie: dict[str, int]) -> Rounds:
    """Round 1 with devices a (honest, value 0.01) and b (value -0.01, possibly lying), closed."""
    rounds, _ = make_rounds(tmp_path, model, FedAvg())
    tasks = dict(rounds.step().tasks)
    assert send(rounds, "a", tasks["a"])
    assert send(rounds, "b", tasks["b"], value=-0.01, **lie)
    assert rounds.step().ended is not None
    return rounds


def test_a_claimed_sample_count_weighs_no_more_than_the_birth_declared(tmp_path: Path, model: bytes) -> None:
    honest = one_round(tmp_path / "honest", model, {"samples": 50})
    liar = one_round(tmp_path / "liar", model, {"samples": 2**32})  # the attack: 2^32 samples
    assert honest.publisher.version == liar.publisher.version  # the lie bought nothing beyond its 50 declared
    (stored,) = [u for u in liar.store.round_updates(1) if u.device == "b"]
    assert stored.samples == 50 and stored.weight == 50.0


def test_the_configured_maximum_bounds_what_a_big_birth_declares(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), max_samples=30)
    born(rounds, "b", seq=2, samples=10**9)  # declares a billion samples
    tasks = dict(rounds.step().tasks)
    assert send(rounds, "b", tasks["b"], samples=10**9)
    (stored,) = rounds.store.round_updates(1)
    assert stored.samples == 30


def ranges_of(rounds: Rounds) -> dict[str, tuple[float, float]]:
    layers = rounds.publisher.master.output_names.items()
    return {name: (layer.stats.ema_min, layer.stats.ema_max) for name, layer in layers if layer.stats is not None}


def test_one_liar_cannot_move_the_median_of_the_activation_ranges(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=("a", "b", "c"))
    name, (lo, hi) = next(iter(ranges_of(rounds).items()))
    tasks = dict(rounds.step().tasks)
    honest = {name: (lo, hi)}
    assert send(rounds, "a", tasks["a"], activation_ranges=honest)
    assert send(rounds, "b", tasks["b"], activation_ranges=honest)
    assert send(rounds, "c", tasks["c"], activation_ranges={name: (lo * 100, hi * 100)})  # plausible, but a lie
    assert rounds.step().ended is not None
    assert ranges_of(rounds)[name] == pytest.approx((min(lo, 0.0), max(hi, 0.0)), rel=1e-6)


def test_absurd_activation_ranges_are_dropped(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvg())
    name, (lo, hi) = next(iter(ranges_of(rounds).items()))
    tasks = dict(rounds.step().tasks)
    assert send(rounds, "a", tasks["a"])
    assert send(rounds, "b", tasks["b"], activation_ranges={name: (-1e30, 1e30)})  # the attack: to chance
    assert rounds.step().ended is not None
    assert ranges_of(rounds)[name] == pytest.approx((min(lo, 0.0), max(hi, 0.0)), rel=1e-6)


def lie_in_round(rounds: Rounds, devices: tuple[str, ...], name: str, factor: float, lying: bool) -> None:
    """One round: every device in ``devices`` reports ``name``'s current range times ``factor`` if ``lying``."""
    lo, hi = ranges_of(rounds)[name]
    tasks = dict(rounds.step().tasks)
    for device in devices:
        extra = {"activation_ranges": {name: (lo * factor, hi * factor)}} if lying else {}
        assert send(rounds, device, tasks[device], **extra)
    assert rounds.step().ended is not None


@pytest.mark.parametrize("report_every", [1, 3])
def test_even_when_every_device_lies_a_range_moves_at_most_max_range_growth_per_version_since_the_last_report(
    tmp_path: Path, model: bytes, report_every: int
) -> None:
    """The bound compounds over the versions since ranges were last taken (activations grow in each of them,
    reported or not), at most ``report_every``: the first report gets one version's 2x, the next (3 versions
    on) 8x, not 1000x."""
    devices = ("a", "b", "c")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, max_range_growth=2.0,
                            report_every=report_every, range_settle=0)  # the schedule alone  # fmt: skip
    name, (_, hi) = next((n, r) for n, r in ranges_of(rounds).items() if r[1] > 0)
    lie_in_round(rounds, devices, name, 1000.0, lying=True)  # round 1 asks for a report
    assert ranges_of(rounds)[name][1] == pytest.approx(2.0 * hi)
    for _ in range(report_every - 1):
        lie_in_round(rounds, devices, name, 1000.0, lying=False)  # rounds that do not ask
    before = ranges_of(rounds)[name][1]
    lie_in_round(rounds, devices, name, 1000.0, lying=True)  # the next report
    assert ranges_of(rounds)[name][1] == pytest.approx(2.0**report_every * before)


def test_one_or_two_reporters_move_a_range_by_one_versions_growth_however_long_since_the_last(
    tmp_path: Path, model: bytes
) -> None:
    """A median of two is theirs: a report round closed with few updates (or a late report alone in an async
    buffer) does not get the compounded bound."""
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), max_range_growth=2.0, report_every=3, range_settle=0)
    name, (_, hi) = next((n, r) for n, r in ranges_of(rounds).items() if r[1] > 0)
    for number in range(4):  # rounds 1 and 4 ask for reports
        lie_in_round(rounds, ("a", "b"), name, 1000.0, lying=number in (0, 3))
    assert ranges_of(rounds)[name][1] == pytest.approx(4.0 * hi)


def test_ranges_count_only_in_rounds_whose_tasks_asked_for_them(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), report_every=5, range_settle=0)  # round 2 must not ask
    name, (lo, hi) = next(iter(ranges_of(rounds).items()))
    for factor in (1.5, 1.8):  # round 1 asks, round 2 does not
        tasks = dict(rounds.step().tasks)
        for device in ("a", "b"):
            assert send(rounds, device, tasks[device], activation_ranges={name: (lo * factor, hi * factor)})
        assert rounds.step().ended is not None
        if tasks["a"].round == 1:
            after_first = ranges_of(rounds)[name]
    assert ranges_of(rounds)[name] == after_first  # round 2's unasked ranges changed nothing


def test_ranges_that_moved_far_are_asked_for_again_next_round_and_the_schedule_resumes_once_they_settle(
    tmp_path: Path, model: bytes
) -> None:
    """HAR's ranges went stale between reports every ten rounds: a report that moved a range more than
    ``range_settle`` makes the next round ask, off the schedule, and that round's ranges count."""
    devices = ("a", "b", "c")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, max_range_growth=2.0, report_every=5)
    name, (_, hi) = next((n, r) for n, r in ranges_of(rounds).items() if r[1] > 0)
    lie_in_round(rounds, devices, name, 10.0, lying=True)  # round 1, on the schedule: moved 2x (bounded)
    assert rounds.publisher.ranges_due
    assert [t.report for _, t in rounds.step().tasks] == [True] * 3  # round 2 asks, off the schedule
    assert rounds.store.round_row(2).report is True  # type: ignore[union-attr]
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, max_range_growth=2.0, report_every=5)
    assert rounds.resume() is None and rounds.open_round is not None  # a restart keeps what round 2 asked
    assert rounds.publisher.ranges_due  # and what the current version's ranges did (its master file)
    assert set(rounds.store.round_tasks(2, "train")) == set(devices)
    lo2, hi2 = ranges_of(rounds)[name]
    assert hi2 == pytest.approx(2.0 * hi)
    held = wire.Task(os.urandom(16), 2, rounds.publisher.version, 1, 0.05, 0.01, 0)  # what each device holds
    for device in devices:  # the rebuilt round takes ranges: its tasks asked for them
        assert send(rounds, device, held, activation_ranges={name: (lo2, hi2 * 1.1)})
    assert rounds.step().ended is not None
    assert ranges_of(rounds)[name][1] == pytest.approx(1.1 * hi2)  # taken; moved 1.1x: settled
    assert not rounds.publisher.ranges_due
    tasks = dict(rounds.step().tasks)  # round 3: back on the schedule, which does not ask
    assert not any(t.report for t in tasks.values())
    for device in devices:
        assert send(rounds, device, tasks[device], activation_ranges={name: (lo2, hi2 * 2)})
    assert rounds.step().ended is not None
    assert ranges_of(rounds)[name][1] == pytest.approx(1.1 * hi2)  # unasked: not taken


def test_weights_that_grew_since_ranges_were_taken_make_the_next_round_ask_for_reports(
    tmp_path: Path, model: bytes
) -> None:
    """No one reports activations between reports, but the gateway sees the weights: HAR's settled by round 3,
    its weights grew, and the ranges went stale until round 11. Weights grown past ``range_settle`` ask."""
    devices = ("a", "b", "c")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, report_every=5)
    name = next(iter(ranges_of(rounds)))
    lie_in_round(rounds, devices, name, 1.0, lying=True)  # round 1: the ranges as they are, nothing moves
    assert not rounds.publisher.ranges_due
    tasks = dict(rounds.step().tasks)  # round 2: not asked; its updates grow the largest tensor's norm
    assert not any(t.report for t in tasks.values())
    before = rounds.publisher.master.range_drift()
    for device in devices:
        assert send(rounds, device, tasks[device], value=5.0)
    assert rounds.step().ended is not None
    assert rounds.publisher.master.range_drift() > 1.25 >= before
    assert rounds.publisher.ranges_due
    tasks = dict(rounds.step().tasks)
    assert all(t.report for t in tasks.values())  # round 3 asks
    restarted, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, report_every=5)
    assert restarted.publisher.ranges_due  # the norms when ranges were taken are kept with the version
    assert restarted.resume() is None
    for device in devices:  # boards behind the bridge send no ranges: asked, none came
        assert send(restarted, device, tasks[device])
    assert restarted.step().ended is not None
    assert not restarted.publisher.ranges_due  # the drift counts afresh: not asked again every round
    assert not any(t.report for _, t in restarted.step().tasks)


def test_a_liar_naming_a_layer_by_name_beside_the_others_index_is_one_report_in_their_median(
    tmp_path: Path, model: bytes
) -> None:
    """A layer may be named by tensor index or by name: filed apart, a liar's name-keyed report was a median of
    its own, applied after the honest one (2x from theirs every round) and counted as a move that kept every
    round asking. Both keys are one layer; a made-up key is dropped and does not count as a reporter."""
    honest = ("a", "b", "c")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=(*honest, "d"), max_range_growth=2.0,
                            report_every=100)  # fmt: skip
    master = rounds.publisher.master
    name, (lo, hi) = next((n, r) for n, r in ranges_of(rounds).items() if r[1] > 0)
    index = master.range_keys[name]
    assert index != name and master.output_tensors[index] is master.output_names[name]
    for _ in range(3):
        tasks = dict(rounds.step().tasks)
        if not tasks["a"].report:
            break
        for device in honest:  # as edge_runtime/agent.py names them: by index, the range as it is
            assert send(rounds, device, tasks[device], activation_ranges={index: (lo, hi)})
        lie = {name: (lo * 1000, hi * 1000), index: (lo * 1000, hi * 1000), "no such layer": (0.0, 1.0)}
        assert send(rounds, "d", tasks["d"], activation_ranges=lie)
        assert rounds.open_round is not None and rounds.open_round.aggregate.range_reporters() == 4
        assert rounds.step().ended is not None
        assert ranges_of(rounds)[name] == pytest.approx((min(lo, 0.0), max(hi, 0.0)), rel=1e-6)
    assert not rounds.publisher.ranges_due and tasks["a"].round == 2  # round 1 asked; round 2 did not


def test_secure_aggregation_rounds_take_no_ranges_so_none_asks_for_them_off_the_schedule(
    tmp_path: Path, model: bytes
) -> None:
    """The gateway sees only a secure round's sum: its weights move but no ranges are ever taken, so asking
    would cost every device an evaluation each round for nothing."""
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=("a", "b", "c"), min_devices=3, overprovision=0,
                            report_every=100, deadline=600.0, tables={"secagg": {"mode": "secagg"}})  # fmt: skip
    tensor, numel = max(rounds.sizes.items(), key=lambda kv: kv[1])
    asked = []
    for _ in range(4):
        step = rounds.step()
        assert step.opened is not None
        asked.append(any(t.report for _, t in step.tasks))
        sums = {tensor: (np.arange(numel), np.full(numel, 0.3))}  # weights grow far past range_settle
        assert rounds.secure_close(step.opened.round, sums, 3).ended is not None
    assert rounds.publisher.master.range_drift() > 1.25
    assert asked == [True, False, False, False]  # round 1 on the schedule only


def test_a_late_async_update_is_judged_by_what_its_own_tasks_round_asked(tmp_path: Path, model: bytes) -> None:
    """Buffer 1's tasks asked for reports, buffer 2's did not: a device answering its buffer-1 task after
    buffer 1 closed has its ranges taken in buffer 2 (from the stored row of round 1), the others not."""
    devices = ("a", "b", "c", "d")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, mode="async", buffer_size=3,
                            concurrency=4, report_every=5, max_range_growth=2.0)  # fmt: skip
    name, (lo, hi) = next((n, r) for n, r in ranges_of(rounds).items() if r[1] > 0)
    first = dict(rounds.step().tasks)
    assert set(first) == set(devices) and all(t.report and t.round == 1 for t in first.values())
    for device in ("a", "b", "c"):  # the honest reports keep the ranges where they are
        assert send(rounds, device, first[device], activation_ranges={name: (lo, hi)})
    assert rounds.step().ended is not None  # buffer 1 closed; buffer 2 open
    assert rounds.open_round is not None and rounds.open_round.number == 2
    assert ranges_of(rounds)[name][1] == pytest.approx(hi)
    second = dict(rounds.step().tasks)
    assert second and not any(t.report for t in second.values())
    late = wire.Task(first["d"].task_id, 1, first["d"].base_version, 1, 0.05, 0.01, 0)
    assert send(rounds, "d", late, activation_ranges={name: (lo, 1.5 * hi)})  # its own task asked
    for device in ("a", "b"):  # unasked: counted, these two would be the median (1.8x)
        assert send(rounds, device, second[device], activation_ranges={name: (lo, 1.8 * hi)})
    assert rounds.step().ended is not None
    assert ranges_of(rounds)[name][1] == pytest.approx(1.5 * hi)  # d's alone


@pytest.mark.parametrize("settle", [0.5, 1.0, float("inf"), float("nan")])
def test_a_range_settle_that_is_neither_off_nor_a_factor_above_one_is_refused_by_name(
    tmp_path: Path, settle: float
) -> None:
    with pytest.raises(ValueError, match=r"range_settle .* must be 0 \(off\) or a factor above 1"):
        GatewayConfig.from_mapping({"gateway": {"federation": "t", "storage": str(tmp_path)},
                                    "rounds": {"range_settle": settle}}, env={})  # fmt: skip


def test_with_range_settle_off_only_the_schedule_asks_for_reports(tmp_path: Path, model: bytes) -> None:
    devices = ("a", "b", "c")
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), devices=devices, report_every=5, range_settle=0)
    name = next(iter(ranges_of(rounds)))
    lie_in_round(rounds, devices, name, 10.0, lying=True)
    assert not rounds.publisher.ranges_due
    assert not any(t.report for _, t in rounds.step().tasks)


def test_an_evaluation_report_is_kept_as_its_bounded_fields_only(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvg(), rounds=1)
    tasks = dict(rounds.step().tasks)
    for device in ("a", "b"):
        assert send(rounds, device, tasks[device])
    rounds.step()  # closes round 1
    asks = dict(rounds.step().tasks)  # the final evaluation
    junk = {f"x{i}": 1.0 for i in range(60)} | {"eval_accuracy": 5.0, "eval_loss": -3.0}
    report = wire.Update(os.urandom(16), "a", asks["a"].round, asks["a"].base_version, 2**32, [], metrics=junk)
    verdict = rounds.intake(report, wire.encode(report), "a", 0.0)
    assert verdict.accepted and verdict.samples == 50
    (stored,) = rounds.store.round_updates(asks["a"].round, "eval")
    kept = wire.decode(stored.payload, expect=wire.Update)
    assert kept.metrics == {"eval_accuracy": 1.0, "eval_loss": 0.0} and kept.samples == 50
    assert len(stored.payload) < 120


def test_a_death_counts_only_with_the_counter_of_the_current_birth(tmp_path: Path) -> None:
    from gateway.store import GatewayStore

    registry = Registry(GatewayStore(":memory:"))
    caps = wire.Capabilities(ram=1, backend="x", samples=5)
    birth = wire.Presence("d", True, 7, 0, caps)
    registry.observe(birth, wire.encode(birth))
    for forged_seq in (8, 2**63 - 1, 6):  # a larger counter (forged), the largest, an older one (a late will)
        death = wire.Presence("d", False, forged_seq, 0)
        _, died = registry.observe(death, wire.encode(death))
        assert not died and registry.get("d").online  # type: ignore[union-attr]
    ghost = wire.Presence("never-born", False, 1, 0)
    registry.observe(ghost, wire.encode(ghost))
    assert registry.get("never-born") is None
    death = wire.Presence("d", False, 7, 0)
    _, died = registry.observe(death, wire.encode(death))
    assert died and not registry.get("d").online  # type: ignore[union-attr]
