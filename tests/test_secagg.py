"""Secure aggregation (SecAgg+) proved against its definitions: secret sharing, the masks, the recovered sum, the
dropouts it survives and the one it does not, and the requests a device refuses. Every message goes through the
wire codec (tinyfed/secagg_local.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from edge_runtime import wire
from edge_runtime.secagg import DeviceSession, SecAggFailed, SecAggRefused, SparseInput, field, graph, shamir
from gateway.secagg import FieldPlan, choose_coordinates, plan
from tinyfed.secagg_local import relay, run_session

# ---- Shamir ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "count"), [(1, 3), (2, 4), (3, 5), (5, 5)])
def test_any_threshold_shares_reconstruct_the_secret_and_fewer_do_not_determine_it(threshold: int, count: int) -> None:
    secret = int.from_bytes(bytes(range(1, 33)), "big")
    shares = shamir.split(secret, threshold, list(range(1, count + 1)))
    for subset in itertools.combinations(shares, threshold):
        assert shamir.reconstruct({x: shares[x] for x in subset}) == secret
    if threshold > 1:
        fewer = dict(list(shares.items())[: threshold - 1])
        assert shamir.reconstruct(fewer) != secret  # interpolating too few points gives another value


@pytest.mark.parametrize("threshold", [2, 3])
def test_fewer_than_threshold_shares_are_distributed_alike_for_every_secret(threshold: int) -> None:
    """Perfect secrecy, by enumeration in GF(7): over every choice of the random coefficients, the t - 1 shares
    take each possible value equally often, whatever the secret (so every secret stays consistent with them)."""
    prime, xs = 7, [1, 2, 3, 4][: threshold - 1]
    for secret in range(prime):
        seen: dict[tuple[int, ...], int] = {}
        for coefficients in itertools.product(range(prime), repeat=threshold - 1):
            draws = iter(coefficients)
            shares = shamir.split(secret, threshold, [*xs, 5], prime, randbelow=lambda _, d=draws: next(d))
            key = tuple(shares[x] for x in xs)
            seen[key] = seen.get(key, 0) + 1
        assert len(seen) == prime ** len(xs) and set(seen.values()) == {prime ** (threshold - 1 - len(xs))}


def test_shamir_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(5, 4, [1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(5, 2, [1, 1, 2])
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.from_bytes(b"\xff" * 32)


# ---- the field, the PRG, the graph -------------------------------------------------------------------------------


def test_the_field_is_the_largest_prime_below_its_power_of_two() -> None:
    def brute(n: int) -> bool:
        return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))

    for bits in range(8, 21):
        p = field.prime_below(bits)
        assert brute(p) and not any(brute(q) for q in range(p + 1, 1 << bits))
    assert field.prime_below(32) == 2**32 - 5 and field.prime_below(31) == 2**31 - 1


def test_values_pack_to_exactly_their_bits_and_back() -> None:
    rng = np.random.default_rng(0)
    for bits in (8, 13, 21, 32):
        v = rng.integers(0, field.prime_below(bits), 1001).astype(np.uint64)
        data = field.pack(v, bits)
        assert len(data) == field.packed_size(1001, bits)
        assert np.array_equal(field.unpack(data, 1001, bits), v)
    with pytest.raises(ValueError, match="at or above"):
        field.unpack(b"\xff" * 4, 1, 32)


def test_masks_are_a_deterministic_function_of_the_seed_within_the_field() -> None:
    a = field.masks(b"a" * 32, 5000, 21)
    assert np.array_equal(a, field.masks(b"a" * 32, 5000, 21))
    assert not np.array_equal(a, field.masks(b"b" * 32, 5000, 21))
    assert int(a.max()) < field.prime_below(21) and a.dtype == np.uint64


@pytest.mark.parametrize(("count", "degree"), [(5, 10), (30, 6), (101, 8)])
def test_the_graph_is_symmetric_and_each_device_has_its_degree(count: int, degree: int) -> None:
    g = graph.neighbours(count, degree, b"s" * 32)
    assert sorted(g) == list(range(1, count + 1))
    for i, ns in g.items():
        assert i not in ns and all(i in g[j] for j in ns)
        assert len(ns) == min(count - 1, degree)
    if degree < count - 1:  # a sparse graph depends on the seed; a complete one cannot
        assert graph.neighbours(count, degree, b"t" * 32) != g


# ---- the protocol ------------------------------------------------------------------------------------------------


def session_inputs(count: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"dev-{i:03d}": rng.integers(-2047, 2048, size) for i in range(count)}


def coordinates(size: int) -> list[tuple[int, np.ndarray]]:
    half = size // 2
    return [(3, np.arange(0, 2 * half, 2)), (5, np.arange(size - half))]


def field_plan(count: int) -> FieldPlan:
    return plan(count, 100, clip=1.0, input_bits=12)


def test_the_recovered_sum_is_exactly_the_sum_of_the_inputs() -> None:
    inputs = session_inputs(10, 100)
    _, result = run_session(inputs, coordinates(100), field_plan(10), degree=9, threshold=6)
    expected = sum(inputs.values())
    got = np.concatenate([result.sum[3][1], result.sum[5][1]]) / field_plan(10).step
    assert np.array_equal(np.rint(got).astype(np.int64), expected)
    assert result.survivors == sorted(inputs) and result.dropped == []


def test_a_sparse_graph_recovers_the_sum_with_devices_gone_before_masking() -> None:
    inputs = session_inputs(30, 100, seed=1)
    gone = {"dev-003", "dev-017"}
    s, result = run_session(inputs, coordinates(100), field_plan(30), degree=6, threshold=5,
                            gone_before_masking=gone)  # fmt: skip
    expected = sum(v for name, v in inputs.items() if name not in gone)
    got = np.concatenate([result.sum[3][1], result.sum[5][1]]) / field_plan(30).step
    assert np.array_equal(np.rint(got).astype(np.int64), expected)
    assert sorted(result.dropped) == sorted(gone)
    assert max(s.uplink.values()) < 2 * min(s.uplink.values())  # nobody pays for the whole population


def test_up_to_the_threshold_of_devices_gone_after_masking_still_recover_the_sum() -> None:
    """7 devices, a complete graph: 7 holders, threshold 4, so 3 may leave after masking."""
    inputs = session_inputs(7, 100, seed=2)
    _, result = run_session(inputs, coordinates(100), field_plan(7), degree=6, threshold=4,
                            gone_after_masking={"dev-000", "dev-003", "dev-006"})  # fmt: skip
    got = np.concatenate([result.sum[3][1], result.sum[5][1]]) / field_plan(7).step
    assert np.array_equal(np.rint(got).astype(np.int64), sum(inputs.values()))


def test_one_dropout_more_fails_the_session_cleanly() -> None:
    inputs = session_inputs(7, 100, seed=2)
    with pytest.raises(SecAggFailed, match=r"3 shares of device .* self mask, 4 needed"):
        run_session(inputs, coordinates(100), field_plan(7), degree=6, threshold=4,
                    gone_after_masking={"dev-000", "dev-003", "dev-005", "dev-006"})  # fmt: skip


def test_too_few_masked_inputs_fail_before_anyone_is_asked_to_unmask() -> None:
    inputs = session_inputs(5, 100, seed=3)
    gone = {"dev-000", "dev-001", "dev-002"}
    with pytest.raises(SecAggFailed, match="2 masked inputs, 3 needed"):
        run_session(inputs, coordinates(100), field_plan(5), degree=4, threshold=3, min_survivors=3,
                    gone_before_masking=gone)  # fmt: skip


def chi_square_p(values: np.ndarray, prime: int, bins: int = 64) -> float:
    counts = np.bincount((values.astype(np.float64) * bins / prime).astype(np.int64), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


def test_a_masked_input_is_indistinguishable_from_uniform_and_the_unmasked_one_is_not() -> None:
    """The gateway's view of one device: a chi-square test of uniformity over the field passes for the masked
    input and fails, by far, for the same input unmasked (small integers, i.e. near 0 and near the prime)."""
    size = 40_000
    bits = 21
    fp = FieldPlan(bits, 1.0, 0.0, 1.0, 0.0)
    inputs = session_inputs(4, size, seed=4)
    s, _ = run_session(inputs, [(0, np.arange(size))], fp, degree=3, threshold=3)
    prime = field.prime_below(bits)
    masked = field.unpack(s.masked_seen["dev-001"], size, bits)
    plain = field.to_field(inputs["dev-001"], bits)
    assert chi_square_p(masked, prime) > 1e-4
    assert chi_square_p(plain, prime) < 1e-12
    assert stats.kstest(masked.astype(np.float64) / prime, "uniform").pvalue > 1e-4
    assert stats.kstest(plain.astype(np.float64) / prime, "uniform").pvalue < 1e-12


# ---- what a device refuses ----------------------------------------------------------------------------------------


def test_a_device_refuses_to_give_both_shares_of_one_device() -> None:
    inputs = session_inputs(5, 10, seed=5)

    def both(name: str, unmask: wire.SecAggUnmask) -> wire.SecAggUnmask:
        other = next(i for i in unmask.survivors if i != 1)
        return wire.SecAggUnmask(unmask.session, unmask.survivors, [*unmask.dropped, other])

    with pytest.raises(SecAggRefused, match="both the self-mask and the mask-key share"):
        run_session(inputs, coordinates(10), field_plan(5), degree=4, threshold=3, tamper=both)


def test_a_device_answers_one_unmask_request_only() -> None:
    inputs = session_inputs(5, 10, seed=6)
    answered: dict[str, wire.SecAggUnmask] = {}

    def record(name: str, unmask: wire.SecAggUnmask) -> wire.SecAggUnmask:
        answered[name] = unmask
        return unmask

    s, _ = run_session(inputs, coordinates(10), field_plan(5), degree=4, threshold=3, tamper=record)
    name, first = next(iter(answered.items()))
    other = next(i for i in first.survivors if i != s.devices[name].index)
    swapped = wire.SecAggUnmask(first.session, [i for i in first.survivors if i != other], [other])
    with pytest.raises(SecAggRefused, match="arrived at step done"):
        s.devices[name].reveal(swapped)


def test_a_device_refuses_a_threshold_two_groups_could_both_reach() -> None:
    server_setup = wire.SecAggSetup(bytes(16), 1, 1, 5, 4, 2, bytes(32), 21, 0.01, 1.0, 0.0, [], 0)
    with pytest.raises(SecAggRefused, match="not above half of 5 holders"):
        DeviceSession(relay(server_setup, wire.SecAggSetup))


def test_a_device_refuses_keys_of_devices_outside_its_neighbourhood() -> None:
    setup = wire.SecAggSetup(bytes(16), 1, 1, 30, 4, 3, bytes(32), 21, 0.01, 1.0, 0.0, [], 0)
    device = DeviceSession(setup)
    device.advertise()
    stranger = next(i for i in range(2, 31) if i not in device.neighbours)
    keys = wire.SecAggKeys(bytes(16), [(stranger, bytes(32), bytes(32))])
    with pytest.raises(SecAggRefused, match=rf"\[{stranger}\], not neighbours"):
        device.share(keys)


# ---- the input: coordinates, clipping, quantisation, error feedback ----------------------------------------------


def test_coordinates_come_from_the_previous_aggregate_and_a_seeded_random_share() -> None:
    previous = {0: np.zeros(100), 1: np.zeros(50)}
    previous[1][[3, 7]] = 5.0
    chosen = choose_coordinates({0: 100, 1: 50}, 10, b"x" * 32, previous, random_share=0.8)
    flat = {(t, int(i)) for t, idx in chosen for i in idx}
    assert len(flat) == 10 and {(1, 3), (1, 7)} <= flat
    assert chosen[0][1].tolist() == choose_coordinates({0: 100, 1: 50}, 10, b"x" * 32, previous, 0.8)[0][1].tolist()


def test_the_input_keeps_what_it_does_not_send_in_its_residual() -> None:
    setup = wire.SecAggSetup(bytes(16), 1, 1, 3, 2, 2, bytes(32), 21, 0.001, 10.0, 0.0, [(0, np.array([1, 4]))], 0)
    sparse = SparseInput()
    delta = {0: np.array([0.5, 0.25, -0.5, 0.125, -0.3, 0.0], np.float32)}
    values, residual = sparse.prepare(delta, setup, np.random.default_rng(0))
    sent = np.zeros(6)
    sent[[1, 4]] = values * 0.001
    assert np.allclose(residual[0] + sent, delta[0], atol=1e-6)
    assert abs(residual[0][1]) < 0.001 and residual[0][0] == 0.5


def test_stochastic_rounding_is_unbiased_and_noise_shares_add_up() -> None:
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.3)
    assert abs(field.stochastic_round(x, rng).mean() - 0.3) < 0.01
    shares = sum(field.skellam(2.0, 200_000, rng) for _ in range(5))
    assert abs(shares.var() / (2 * 2.0 * 5) - 1) < 0.05  # Skellam(10) summed from five Skellam(2)


def test_the_field_plan_leaves_no_room_for_the_sum_to_wrap() -> None:
    fp = plan(100, 1000, clip=0.5, input_bits=12, noise_multiplier=1.0, min_survivors=50)
    prime = field.prime_below(fp.bits)
    worst = 100 * (2**11) + 12 * np.sqrt(2 * fp.noise * 100)
    assert worst < prime // 2
    assert fp.noise * 2 * 50 == pytest.approx((1.0 * fp.sensitivity / fp.step) ** 2)


def test_distributed_dp_goes_into_the_ledger_as_the_gaussian_its_noise_matches() -> None:
    pytest.importorskip("dp_accounting")
    from gateway.privacy import Accountant
    from gateway.secagg import ledger_entry

    fp = plan(10, 100, clip=1.0, input_bits=12, noise_multiplier=1.0, min_survivors=8)
    inputs = session_inputs(10, 100, seed=7)
    _, result = run_session(inputs, coordinates(100), fp, degree=9, threshold=6, gone_before_masking={"dev-000"})
    assert result.noise_multiplier == pytest.approx(np.sqrt(9 / 8))  # 9 shares of noise sized for 8
    entry = ledger_entry(result, 1.0, population=10)
    accountant = Accountant("rdp", 1e-5)
    same_gaussian = ("local-dp", 1.0, 2 * result.noise_multiplier)  # local-dp's event is Gaussian(z / 2)
    assert accountant.ledger_epsilon([entry] * 5) == pytest.approx(accountant.epsilon([same_gaussian] * 5))


def test_every_secure_aggregation_message_type_is_told_apart_without_decoding() -> None:
    """Types 30..37 take a second byte in CBOR: the gateway still routes answers before decoding them."""
    samples = [
        wire.SecAggAdvertise(bytes(16), 1, bytes(32), bytes(32)),
        wire.SecAggShares(bytes(16), 1, []),
        wire.SecAggMasked(bytes(16), 1, b""),
        wire.SecAggReveal(bytes(16), 1, []),
        wire.SecAggSetup(bytes(16), 1, 1, 1, 0, 1, bytes(32), 8, 1.0, 1.0, 0.0, [], 0),
    ]
    for message in samples:
        assert wire.peek_type(wire.encode(message)) == type(message).TYPE


def test_a_devices_secrets_are_field_elements_and_its_key_is_rebuilt_from_its_shares() -> None:
    from edge_runtime.secagg import crypto

    for _ in range(200):
        assert int.from_bytes(shamir.secret_bytes(), "big") < shamir.SEED_PRIME
    pair = crypto.KeyPair.generate(shamir.secret_bytes())
    shares = shamir.split(int.from_bytes(pair.private, "big"), 3, [1, 2, 3, 4])
    rebuilt = shamir.reconstruct({x: shares[x] for x in (2, 3, 4)}).to_bytes(32, "big")
    assert crypto.KeyPair.from_private(rebuilt).public == pair.public


def test_settings_a_session_cannot_keep_are_refused_naming_their_keys(tmp_path: Path) -> None:
    from edge_runtime.config import ConfigError
    from gateway.config import GatewayConfig

    base = {"gateway": {"storage": str(tmp_path), "model": "m.tflite"}, "trust": {"mode": "insecure"},
            "rounds": {"min_devices": 3}, "secagg": {"mode": "secagg"}}  # fmt: skip
    assert GatewayConfig.from_mapping(base, env={}).secagg.on
    clashing = base | {"rounds": {"mode": "async", "overprovision": 0.5, "deadline": 60.0, "min_devices": 2},
                       "strategy": {"name": "fedmedian"}, "robustness": {"detect": True}}  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_mapping(clashing, env={})
    for key in ("[rounds] mode", "[rounds] overprovision", "[rounds] deadline", "[rounds] min_devices",
                "[strategy] name", "[robustness] detect"):
        assert key in str(refused.value)
    with pytest.raises(ConfigError, match=r"\[secagg\].*threshold"):
        GatewayConfig.from_mapping(base | {"secagg": {"mode": "secagg", "threshold": 0.0}}, env={})
