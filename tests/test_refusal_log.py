"""What a flood of refused messages costs the gateway: its log, and its disk.

Each refused message is recorded in the store, and was also said in a log line of its own: journald limits a
service's lines as a whole, so a sender of refused messages could push the gateway's other lines out of the
journal, and replace its history with the flood's. Now a bounded number of lines per window is said one by one
(edge_runtime/lograte.py), and the rest in one line; the store still records every message, up to the latest
``[retention] refusals`` (100,000 by default): each is a row, and unbounded a flood of them filled the disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_runtime import wire
from edge_runtime.lograte import RateLimitedLog
from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.service import Gateway

from .federation import WAIT, ManualDevice, gateway_config, small_update
from .helpers import wait_for


def test_a_flood_of_refused_messages_is_recorded_whole_and_logged_at_a_bounded_rate(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    config = GatewayConfig.from_mapping(gateway_config(broker, tmp_path / "gw", initial_model), env={})
    gateway = Gateway(config).start()
    device = ManualDevice(broker, "m1")
    flood = 300
    try:
        for i in range(flood):
            device.send(b"\xa3garbage" + i.to_bytes(2, "big"))  # not CBOR a gateway can read: refused, no receipt
        wait_for(lambda: len(gateway.store.refusals()) >= flood, WAIT, f"the gateway to record {flood} refusals")
    finally:
        device.stop()
        gateway.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.service" and "refused" in r.getMessage()]
    # The first burst one by one, then one line that the rest are counted (their summary comes with the next
    # window, after this test): not one line per message.
    assert len(said) < flood // 10, len(said)  # it was one line per message
    assert len(said) == gateway.said.burst + 1, (len(said), said[-3:])
    assert "the rest are counted" in said[-1]


def test_lines_past_the_burst_are_said_as_one_when_the_next_window_begins(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("tests.lograte")
    said = RateLimitedLog(logger, "refused messages", "the store records each: tinyfed gateway status", burst=3,
                          window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tests.lograte"):
        for i in range(10):
            said.warning("refused message %d", i)
        now[0] = 61.0
        said.info("refused message %d", 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.lograte"]
    assert lines == [
        "refused message 0", "refused message 1", "refused message 2",
        "more refused messages than 3 in 60 s: the rest are counted and said in one line",
        "7 more refused messages were not logged one by one in the 60 s after the first 3 (the store records each: "
        "tinyfed gateway status)",
        "refused message 10",
    ], lines  # fmt: skip


def test_a_flood_of_refused_messages_keeps_only_the_latest_records_while_no_round_closes(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    """The round stays open throughout (its deadline is far off): the round thread prunes between rounds."""
    settings = gateway_config(broker, tmp_path / "gw", initial_model, deadline=600.0)
    settings["retention"] = {"refusals": 20}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    device = ManualDevice(broker, "m1")
    try:
        assert device.wait(lambda: len(device.tasks) >= 1), "round 1 did not open"
        for i in range(100):
            device.send(b"\xa3garbage" + i.to_bytes(2, "big"))  # refused, recorded without an id
        # Then one refused update with an id, on the same topic: its receipt says the garbage was judged first.
        probe = small_update("m1", device.tasks[0], gateway.sizes)
        probe.round = 98
        device.send(wire.encode(probe))
        assert device.wait(lambda: any(probe.update_id in r.refused for r in device.receipts))
        wait_for(lambda: len(gateway.store.refusals()) <= 20 + 2, WAIT, "the round thread to prune the refusals")
        kept = gateway.store.refusals()
        assert kept[-1]["update_id"] == probe.update_id and "round 98" in kept[-1]["reason"]  # the latest stay
        assert gateway.open_round is not None and gateway.open_round.number == 1  # no round closed meanwhile
        assert gateway.store.known_update(probe.update_id) == kept[-1]["reason"]  # a resend is answered as before
    finally:
        device.stop()
        gateway.stop()


def test_a_flood_of_refused_messages_shares_the_group_commits_fsyncs_instead_of_two_each(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    """Each message refused before it could be judged was a transaction of its own on the MQTT thread, which
    first committed the open batch early: one or two fsyncs a message, so a sender of garbage set the pace of
    every honest device's intake. Now it waits in the group commit's batch like an update. The commit delay is long
    here so that the flood, however slowly it arrives, shares a few commits; the count does not depend on speed
    as long as the flood arrives within a few of them."""
    settings = gateway_config(broker, tmp_path / "gw", initial_model, deadline=600.0)
    settings["gateway"] = {**settings["gateway"], "commit_delay": 2.0}  # type: ignore[dict-item]
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    device = ManualDevice(broker, "m1")
    flood = 100
    try:
        assert device.wait(lambda: len(device.tasks) >= 1), "round 1 did not open"
        before = gateway.store.commits
        for i in range(flood):
            device.send(b"\xa3garbage" + i.to_bytes(2, "big"))  # unreadable: recorded without an id, no receipt
        probe = small_update("m1", device.tasks[0], gateway.sizes)
        probe.round = 98  # a refused update with a readable id: its receipt goes out once its batch commits
        device.send(wire.encode(probe))
        assert device.wait(lambda: any(probe.update_id in r.refused for r in device.receipts))
        assert gateway.store.known_update(probe.update_id) is not None
        wait_for(lambda: len(gateway.store.refusals()) >= flood + 1, WAIT, f"the gateway to record {flood + 1}")
        commits = gateway.store.commits - before
    finally:
        device.stop()
        gateway.stop()
    assert commits < flood // 4, commits  # it was one a message, two while updates were staged
