"""What the field does to a gateway, through a real Mosquitto: broker outages, a full disk.

Each test drives the real gateway with hand-driven devices (tests/federation.py) and breaks one real
thing: the broker process is stopped and started again, the storage is a real 6 MiB tmpfs that fills up.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess
from gateway.clock import FakeClock
from gateway.config import GatewayConfig
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import WAIT, HeldStrategy, ManualDevice, gateway_config, retained_manifest, small_update
from .helpers import wait_for


def test_a_broker_outage_pauses_round_deadlines_and_a_model_whose_publication_failed_is_republished(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    clock = FakeClock(time.time())
    config = GatewayConfig.from_mapping(gateway_config(broker, tmp_path / "gw", initial_model, min_devices=2,
                                                       deadline=30.0), env={})  # fmt: skip
    strategy = HeldStrategy()
    devices = [ManualDevice(broker, f"o{i}") for i in range(2)]
    gateway = Gateway(config, clock=clock, strategy=strategy).start()
    try:
        for d in devices:
            assert d.wait(lambda d=d: len(d.tasks) == 1)  # type: ignore[misc]
        assert gateway.open_round is not None
        deadline = gateway.open_round.row.deadline
        first, second = devices
        first.send(wire.encode(small_update(first.name, first.tasks[0], gateway.sizes)))
        assert first.wait(lambda: len(first.receipts) == 1)

        # An outage far longer than the round's deadline, by the gateway's clock.
        gateway.republished.clear()
        broker.stop()
        assert gateway.offline.wait(WAIT), "the gateway did not notice the broker was gone"
        clock.advance(100.0)
        broker.start()
        assert gateway.republished.wait(WAIT), "the gateway did not republish after reconnecting"
        assert not gateway.offline.is_set()
        assert gateway.open_round is not None and gateway.open_round.number == 1, "the round did not survive"
        assert gateway.open_round.row.deadline == deadline + 100.0
        assert gateway.store.open_round_row().deadline == deadline + 100.0  # type: ignore[union-attr]

        # The broker goes while the round closes: publishing the new version fails, and is done on reconnect.
        assert second.link.wait_ready(WAIT)
        second.send(wire.encode(small_update(second.name, second.tasks[0], gateway.sizes)))
        assert strategy.entered.wait(WAIT)
        old = gateway.version
        gateway.republished.clear()
        broker.stop()
        strategy.release.set()
        assert gateway.offline.wait(WAIT)
        assert gateway.version != old  # the version was made and adopted, but the broker never got it
        broker.start()
        assert gateway.republished.wait(WAIT)
        assert retained_manifest(broker).version == gateway.version
        assert first.wait(lambda: len(first.tasks) == 2), "round 2 did not reach the devices after the outage"
        assert first.tasks[1].base_version == gateway.version
    finally:
        strategy.release.set()
        for d in devices:
            d.stop()
        gateway.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 6 MiB filesystem (tmpfs), so the gateway's storage fills up for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem's free space."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_stops_new_rounds_with_one_message_loses_nothing_and_rounds_resume_when_space_returns(
    broker: MosquittoProcess, small_disk: Path, tmp_path: Path, initial_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = gateway_config(broker, small_disk / "gw", initial_model, min_devices=2)
    settings["gateway"]["min_free_mb"] = 1  # type: ignore[index]
    config = GatewayConfig.from_mapping(settings, env={})
    gateway = Gateway(config)
    devices = [ManualDevice(broker, f"f{i}") for i in range(2)]
    filler = fill(small_disk, leave=512 * 1024)  # below the 1 MiB floor before the first round could open
    gateway.start()
    try:
        wait_for(lambda: gateway.rounds.paused, WAIT, "the gateway to notice the disk is short")
        assert "below [gateway] min_free_mb = 1: no new round opens" in str(gateway.rounds.paused)
        assert all(not d.tasks for d in devices) and gateway.store.last_round() == 0
        filler.unlink()
        for d in devices:
            assert d.wait(lambda d=d: len(d.tasks) == 1), "no round opened once space was freed"  # type: ignore[misc]
        assert gateway.rounds.paused is None

        # The disk fills completely mid-round: an update cannot be stored, so it gets no receipt.
        first, second = devices
        filler = fill(small_disk, leave=0)
        lost = wire.encode(small_update(first.name, first.tasks[0], gateway.sizes))
        with caplog.at_level(logging.WARNING, logger="gateway"):
            first.send(lost)
            wait_for(lambda: gateway.unstored == 1, WAIT, "the gateway to fail to store the first send")
            first.send(lost)  # a resend after that failure is judged afresh and meets the same full disk
            wait_for(lambda: gateway.unstored == 2, WAIT, "the gateway to judge both sends")
        assert not first.receipts  # nothing stored, nothing receipted: the device keeps it
        assert caplog.text.count("out of space (database or disk is full); not counted, the device will send it") == 1
        assert gateway.store.round_updates(1) == []
        filler.unlink()
        first.send(lost)  # what a device's outbox does: send again until a receipt comes
        lost_id = wire.decode(lost, expect=wire.Update).update_id
        assert first.wait(lambda: any(lost_id in r.received for r in first.receipts))
        second.send(wire.encode(small_update(second.name, second.tasks[0], gateway.sizes)))
        assert first.wait(lambda: len(first.tasks) == 2), "round 1 did not close once space returned"
        assert sorted(u.device for u in gateway.store.round_updates(1, "train")) == ["f0", "f1"]
    finally:
        for d in devices:
            d.stop()
        gateway.stop()
    store = GatewayStore(small_disk / "gw" / "gateway.db")
    assert store._query("PRAGMA integrity_check") == [("ok",)]
    assert [r.status for r in store.rounds()][:1] == ["closed"]
    store.close()
