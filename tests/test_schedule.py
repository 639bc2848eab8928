"""[rounds] interval and [retention], on the real round machinery and store with a fake clock."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from edge_runtime.config import ConfigError
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from gateway.config import GatewayConfig, RetentionSection
from gateway.publisher import VersionFiles, rollback
from gateway.retention import prune, prune_refusals
from gateway.rounds import Rounds
from gateway.strategies.fedavgm import FedAvgM
from tests.test_rounds import answer, make_rounds


@pytest.fixture
def model(digits_mlp: Graph) -> bytes:
    return write_graph(digits_mlp)


def one_round(rounds: Rounds) -> bytes:
    """Open, answer by both devices, close: the new version."""
    opened = rounds.step()
    assert opened.opened is not None, "no round opened"
    for device, task in opened.tasks:
        assert answer(rounds, device, task)
    closed = rounds.step()
    assert closed.ended is not None and closed.ended.version is not None
    return closed.ended.version


def test_rounds_open_on_the_interval_and_not_before(tmp_path: Path, model: bytes) -> None:
    rounds, clock = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), interval=30.0)
    start = clock.now()
    one_round(rounds)  # closes at once: every device answered
    assert rounds.step().opened is None  # not due yet
    clock.advance(29.5)
    assert rounds.step().opened is None
    clock.advance(0.5)
    second = rounds.step().opened
    assert second is not None and second.round == 2 and second.started == start + 30
    clock.advance(61)  # round 2 outlives the interval and its deadline: it fails, and round 3 is due at once
    failed = rounds.step()
    assert failed.ended is not None and failed.ended.status == "failed"
    third = rounds.step().opened
    assert third is not None and third.round == 3 and third.started == start + 30 + 61


def test_interval_is_for_sync_rounds_and_not_negative() -> None:
    with pytest.raises(ConfigError, match=r"\[rounds\]: interval 10 must be >= 0, and is for sync rounds only"):
        GatewayConfig.from_mapping({"rounds": {"mode": "async", "interval": 10.0}}, "g.toml", env={})
    with pytest.raises(ConfigError, match=r"g.toml \[rounds\]: interval -1"):
        GatewayConfig.from_mapping({"rounds": {"interval": -1.0}}, "g.toml", env={})


def test_dashboard_beyond_localhost_needs_a_token_or_client_certificates() -> None:
    with pytest.raises(ConfigError, match=r"g.toml \[dashboard\]: host '0.0.0.0' is beyond this machine: set a token"):
        GatewayConfig.from_mapping({"dashboard": {"enabled": True, "host": "0.0.0.0"}}, "g.toml", env={})
    config = GatewayConfig.from_mapping({"dashboard": {"host": "0.0.0.0", "token": "s3cret"}}, "g.toml", env={})
    assert not config.dashboard.local and not config.dashboard.enabled  # off by default


def test_retention_keeps_the_last_versions_the_current_and_the_rollback_target(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    store = rounds.store
    versions = [rounds.publisher.version] + [one_round(rounds) for _ in range(6)]
    config = dataclasses.replace(rounds.publisher.config, retention=RetentionSection(models=2, updates=2))
    uplink = {r: store.round_counts(r)["uplink_bytes"] for r in range(1, 7)}
    rollback(store, versions[2].hex())  # the gateway stopped, an operator rolled back to round 2's version
    pruned = prune(store, config)
    kept = {m["version"] for m in store.models()}
    assert kept == {versions[2].hex(), versions[5].hex(), versions[6].hex()}
    assert pruned.models == 4 and pruned.files_bytes > 0
    models_dir = config.storage / "models"
    for v in versions:
        files = VersionFiles.of(models_dir, v)
        assert files.model.is_file() == (v.hex() in kept) and files.master.is_file() == (v.hex() in kept)
    # Payloads of rounds 1..4 are gone (6 - 2), their counts and bytes stay; rounds 5 and 6 keep theirs.
    assert all(u.payload == b"" for r in range(1, 5) for u in store.round_updates(r))
    assert all(u.payload != b"" for r in (5, 6) for u in store.round_updates(r))
    assert pruned.payloads == 8 and pruned.payload_bytes > 0
    assert {r: store.round_counts(r)["uplink_bytes"] for r in range(1, 7)} == uplink
    assert prune(store, config).models == 0  # nothing more to do


def test_retention_never_empties_an_open_rounds_updates(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9), devices=("a", "b", "c"), min_devices=3)
    for _ in range(2):
        one_round_of_three = rounds.step()
        for device, task in one_round_of_three.tasks:
            answer(rounds, device, task)
        rounds.step()
    opened = rounds.step()
    assert opened.opened is not None
    device, task = opened.tasks[0]
    assert answer(rounds, device, task)  # one of three: round 3 stays open
    config = dataclasses.replace(rounds.publisher.config, retention=RetentionSection(updates=1))
    store = rounds.store
    prune(store, config)
    assert all(u.payload for u in store.round_updates(3))  # open: kept whatever the setting
    assert all(u.payload == b"" for r in (1, 2) for u in store.round_updates(r))


def test_vacuum_gives_the_emptied_payloads_space_back(tmp_path: Path, model: bytes) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    for _ in range(12):
        one_round(rounds)
    store = rounds.store
    db = rounds.publisher.config.storage / "gateway.db"

    def pages() -> int:
        return int(store._query("PRAGMA page_count")[0][0])

    config = dataclasses.replace(rounds.publisher.config, retention=RetentionSection(updates=2))
    before = pages()
    assert not prune(store, config).vacuumed and pages() == before  # emptied, the file keeps its pages
    one_round(rounds)
    config = dataclasses.replace(config, retention=RetentionSection(updates=2, vacuum_mb=1e-6))
    pruned = prune(store, config)
    assert pruned.vacuumed and pages() < before
    assert store.get_meta("retention_emptied_bytes") == "0" and db.is_file()
    assert store.round_counts(1)["train"] == 2  # the rows are still there


def test_retention_keeps_the_latest_refusals_and_writes_nothing_until_a_tenth_more_are_stored(
    tmp_path: Path, model: bytes
) -> None:
    rounds, _ = make_rounds(tmp_path, model, FedAvgM(momentum=0.9))
    store = rounds.store
    ids = [i.to_bytes(16, "big") for i in range(1, 1151)]
    with store.transaction() as db:
        db.executemany("INSERT INTO refusals (update_id, device, round, reason, bytes, received) VALUES "
                       "(?, 'd', 1, ?, 10, 0)", [(u, f"refused {i}") for i, u in enumerate(ids)])  # fmt: skip
    config = dataclasses.replace(rounds.publisher.config, retention=RetentionSection(refusals=1000))
    assert RetentionSection().refusals == 100_000  # on unless set to 0, unlike the rest of [retention]
    assert prune_refusals(store, dataclasses.replace(config, retention=RetentionSection(refusals=0))) == 0
    assert prune(store, config).refusals == 150  # 1,150 > 1,000 + a tenth: down to the latest 1,000
    kept = store.refusals()
    assert [r["update_id"] for r in kept] == ids[150:]
    assert store.known_update(ids[149]) is None and store.known_update(ids[150]) == "refused 150"
    with store.transaction() as db:
        db.executemany("INSERT INTO refusals (update_id, device, round, reason, bytes, received) VALUES "
                       "(?, 'd', 1, 'later', 10, 0)", [(os.urandom(16),) for _ in range(100)])  # fmt: skip
    assert prune_refusals(store, config) == 0  # 1,100 stored: within a tenth of the limit, nothing written
    assert len(store.refusals()) == 1100
    with pytest.raises(ValueError, match="refusals"):
        RetentionSection(refusals=-1)
