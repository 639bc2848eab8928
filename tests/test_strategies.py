"""Each strategy against a small numpy reference written from its published definition."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edge_runtime import wire
from gateway.aggregate import StreamingAggregate, update_norm
from gateway.strategies import STRATEGIES, ClientDelta, RoundInput, make_strategy

RNG = np.random.default_rng(7)
SIZES = {3: 12, 5: 4}


def weights() -> dict[int, np.ndarray]:
    return {t: RNG.standard_normal(n) for t, n in SIZES.items()}


def clients(n: int = 7) -> list[ClientDelta]:
    return [
        ClientDelta.from_dense(f"d{i}", int(RNG.integers(5, 50)), {t: RNG.standard_normal(s) for t, s in SIZES.items()})
        for i in range(n)
    ]


def weighted_mean(cs: list[ClientDelta]) -> dict[int, np.ndarray]:
    total = sum(c.samples for c in cs)
    return {t: sum(c.samples * c.dense(t, SIZES[t]) for c in cs) / total for t in SIZES}


def round_input(cs: list[ClientDelta]) -> RoundInput:
    return RoundInput(weighted_mean(cs), cs)


def test_fedavg_and_fedprox_add_the_sample_weighted_mean() -> None:
    w, cs = weights(), clients()
    for name in ("fedavg", "fedprox"):
        new = make_strategy(name).step(w, round_input(cs))
        for t in SIZES:
            ref = w[t] + sum(c.samples * c.dense(t, SIZES[t]) for c in cs) / sum(c.samples for c in cs)
            np.testing.assert_allclose(new[t], ref, rtol=1e-12)


def test_fedavgm_is_heavy_ball_momentum_on_the_server() -> None:
    w = weights()
    s = make_strategy("fedavgm", server_lr=0.7, momentum=0.5)
    ref_w = {t: v.copy() for t, v in w.items()}
    ref_v = {t: np.zeros(n) for t, n in SIZES.items()}
    for _ in range(3):
        ri = round_input(clients())
        w = s.step(w, ri)
        for t in SIZES:
            ref_v[t] = 0.5 * ref_v[t] + ri.mean[t]
            ref_w[t] = ref_w[t] + 0.7 * ref_v[t]
            np.testing.assert_allclose(w[t], ref_w[t], rtol=1e-12)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_optimisers_follow_reddi_et_al_algorithm_2(name: str) -> None:
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    s = make_strategy(name, server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    w = weights()
    ref = {t: v.copy() for t, v in w.items()}
    m = {t: np.zeros(n) for t, n in SIZES.items()}
    v = {t: np.full(n, tau**2) for t, n in SIZES.items()}
    for _ in range(4):
        ri = round_input(clients())
        w = s.step(w, ri)
        for t in SIZES:
            d = ri.mean[t]
            m[t] = b1 * m[t] + (1 - b1) * d
            for j in range(SIZES[t]):  # element by element, as the paper writes it
                d2 = d[j] ** 2
                if name == "fedadam":
                    v[t][j] = b2 * v[t][j] + (1 - b2) * d2
                elif name == "fedyogi":
                    v[t][j] = v[t][j] - (1 - b2) * d2 * np.sign(v[t][j] - d2)
                else:
                    v[t][j] = v[t][j] + d2
            ref[t] = ref[t] + eta * m[t] / (np.sqrt(v[t]) + tau)
            np.testing.assert_allclose(w[t], ref[t], rtol=1e-10)
    # State survives a restart: a fresh strategy loaded with it takes the same next step.
    again = make_strategy(name, server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    again.load_state(s.state())
    ri = round_input(clients())
    a, b = s.step(w, ri), again.step(w, ri)
    for t in SIZES:
        np.testing.assert_array_equal(a[t], b[t])


def test_median_and_trimmed_mean_per_coordinate() -> None:
    w, cs = weights(), clients(9)
    median = make_strategy("fedmedian").step(w, round_input(cs))
    trimmed = make_strategy("fedtrimmedavg", beta=0.2).step(w, round_input(cs))
    for t, n in SIZES.items():
        for j in range(n):
            column = sorted(c.dense(t, SIZES[t])[j] for c in cs)
            assert median[t][j] == pytest.approx(w[t][j] + column[4], rel=1e-12)
            assert trimmed[t][j] == pytest.approx(w[t][j] + np.mean(column[1:8]), rel=1e-12)  # floor(0.2*9)=1 each end


def test_krum_and_multikrum_pick_by_neighbour_distance_and_ignore_outliers() -> None:
    honest = clients(6)
    for c in honest:  # honest devices agree roughly
        for t in SIZES:
            c.entries[t] = (c.entries[t][0], 0.1 * c.entries[t][1] + 1.0)
    attackers = [
        ClientDelta.from_dense(f"evil{i}", 10, {t: np.full(n, 50.0 + i) for t, n in SIZES.items()}) for i in range(2)
    ]
    cs = honest + attackers
    f = 2
    flat = np.stack([np.concatenate([c.dense(t, SIZES[t]) for t in SIZES]) for c in cs])
    scores = []
    for i in range(len(cs)):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(len(cs)) if j != i)
        scores.append(sum(d[: len(cs) - f - 2]))
    order = np.argsort(scores, kind="stable")
    w = weights()
    krum = make_strategy("krum", byzantine=f)
    new = krum.step(w, round_input(cs))
    assert krum.chosen == [cs[order[0]].device] and not krum.chosen[0].startswith("evil")
    np.testing.assert_allclose(new[3], w[3] + cs[order[0]].dense(3, 12))
    multi = make_strategy("multikrum", byzantine=f, keep=3)
    new = multi.step(w, round_input(cs))
    expected = np.mean([cs[i].dense(5, 4) for i in order[:3]], axis=0)
    np.testing.assert_allclose(new[5], w[5] + expected)
    assert not any(d.startswith("evil") for d in multi.chosen)


def test_every_registered_strategy_runs_and_bad_parameters_are_named() -> None:
    assert set(STRATEGIES) == {
        "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox",
        "fedmedian", "fedtrimmedavg", "krum", "multikrum",
    }  # fmt: skip
    for name in STRATEGIES:
        out = make_strategy(name).step(weights(), round_input(clients()))
        assert all(np.isfinite(v).all() for v in out.values())
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match="fedtrimmedavg: beta"):
        make_strategy("fedtrimmedavg", beta=0.6)
    with pytest.raises(ValueError, match=r"strategy fedavg: .*momentum"):
        make_strategy("fedavg", momentum=0.9)


def sparse_update(device: str, samples: int, dense: dict[int, np.ndarray], keep: int) -> wire.Update:
    tensors = []
    for t, d in dense.items():
        idx = np.sort(np.argsort(-np.abs(d))[:keep])
        tensors.append(wire.TensorUpdate(t, d.size, idx, wire.CodedValues(wire.ValueCoding.FLOAT32, d[idx], 1.0)))
    return wire.Update(os.urandom(16), device, 1, bytes(32), samples, tensors)


def test_streaming_aggregate_equals_the_dense_weighted_mean_and_clips() -> None:
    ups = [
        sparse_update(f"d{i}", 10 + i, {t: RNG.standard_normal(n).astype(np.float32) for t, n in SIZES.items()}, 3)
        for i in range(5)
    ]
    agg = StreamingAggregate(SIZES)
    for u in ups:
        agg.add(wire.decode(wire.encode(u)))
    dense = [{t.tensor: t.dense().astype(np.float64) for t in u.tensors} for u in ups]
    total = sum(u.samples for u in ups)
    mean = agg.round_input().mean
    for t in SIZES:
        np.testing.assert_allclose(mean[t], sum(u.samples * d[t] for u, d in zip(ups, dense, strict=True)) / total)
    clipped = StreamingAggregate(SIZES, keep_updates=True, clip_norm=0.5)
    clipped.add(ups[0])
    norm = update_norm(ups[0])
    assert norm > 0.5
    got = np.concatenate([clipped.updates[0].dense(t, n) for t, n in SIZES.items()])
    assert np.linalg.norm(got) == pytest.approx(0.5, rel=1e-6)


def sparse_clients(n: int, size: int, senders: int, target: np.ndarray) -> list[ClientDelta]:
    """n devices each sending a few coordinates of a shared direction, every coordinate sent by ``senders``."""
    out: list[list[int]] = [[] for _ in range(n)]
    for j in range(size):
        for i in RNG.permutation(n)[:senders]:
            out[i].append(j)
    cs = []
    for i, idx in enumerate(out):
        index = np.array(sorted(idx), np.int64)
        cs.append(ClientDelta(f"d{i}", 10, {0: (index, target[index] * (1 + 0.1 * RNG.standard_normal(index.size)))}))
    return cs


def test_sparse_median_and_trimmed_mean_learn_where_the_dense_statistics_stay_at_zero() -> None:
    size, n = 40, 10
    target = RNG.standard_normal(size)
    cs = sparse_clients(n, size, 4, target)  # each coordinate sent by 4 of 10: the dense median of it is 0
    w = {0: np.zeros(size)}
    mean = {0: sum(c.dense(0, size) for c in cs) / n}
    fedavg = make_strategy("fedavg").step(w, RoundInput(mean, cs))[0]
    dense_median = np.median(np.stack([c.dense(0, size) for c in cs]), axis=0)
    assert np.abs(dense_median).max() == 0.0  # the published median on these updates: no step at all
    for name, params in (("fedmedian", {}), ("fedtrimmedavg", {"beta": 0.1})):
        step = make_strategy(name, **params).step(w, RoundInput(mean, cs))[0]
        cosine = step @ fedavg / (np.linalg.norm(step) * np.linalg.norm(fedavg))
        assert cosine > 0.9, (name, cosine)
        # FedAvg's scale: 4 senders of 10 move a coordinate by 0.4 x their statistic
        np.testing.assert_allclose(np.linalg.norm(step), np.linalg.norm(fedavg), rtol=0.15)


def test_sparse_statistics_need_enough_senders_and_ignore_a_lone_liar() -> None:
    size, n = 20, 10
    target = np.ones(size)
    cs = sparse_clients(n, size, 5, target)
    liar = ClientDelta("evil", 10, {0: (np.array([3, 25]), np.array([-1e3, 1e3]))})
    w = {0: np.zeros(size + 10)}
    mean = {0: np.zeros(size + 10)}
    median = make_strategy("fedmedian", byzantine=1).step(w, RoundInput(mean, [*cs, liar]))[0]
    assert median[25] == 0.0  # 1 sender < 2 x 1 + 1: too few to tell a liar apart, so no step (dense median)
    assert 0 < median[3] <= 1.0  # the liar is outvoted by the honest senders of coordinate 3
    trimmed = make_strategy("fedtrimmedavg", beta=0.1).step(w, RoundInput(mean, [*cs, liar]))[0]
    assert trimmed[25] == 0.0 and 0 < trimmed[3] <= 1.0


def test_sparse_statistics_equal_the_published_ones_on_dense_updates_and_keep_updates_sparse() -> None:
    ups = [
        sparse_update(f"d{i}", 10, {t: RNG.standard_normal(n).astype(np.float32) for t, n in SIZES.items()}, 2)
        for i in range(4)
    ]
    agg = StreamingAggregate(SIZES, keep_updates=True)
    for u in ups:
        agg.add(u)
    assert all(c.nnz == 2 * len(SIZES) for c in agg.updates)  # kept as sent: 2 entries per tensor, not densified
