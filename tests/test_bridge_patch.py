"""The bridge streams a new version to its boards as a patch: emulated boards on real ptys, a real Mosquitto.

A board that declares patches gets the manifest's own patch on its serial line (a fraction of the model's
bytes), and its inference afterwards equals the host interpreter's on the new version; a board that does not
declare them, or that runs a version the bridge never had (no parent to patch from), gets the whole model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.agent import load_local_data
from edge_runtime.data.dataset import DataSplit
from edge_runtime.device_config import DataSection
from edge_runtime.member import MemberSettings
from edge_runtime.model.backends import default_backend
from edge_runtime.model.graph import Graph
from edge_runtime.model.info import quantize_input
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics
from edge_runtime.trust import MemberTrust
from tests.helpers import fast_config, wait_for
from tests.test_agent import trainable_spec
from tests.test_patches import moved

pytest.importorskip("serial")
pytest.importorskip("tflite_micro")

from firmware_bridge.bridge import Bridge, PortSpec
from firmware_bridge.driver import BoardDriver
from hil.board import BoardSpec, EmulatedBoard

BAUD = 921600
FED = "bridge-patch"
TOPICS = Topics(FED)
WAIT = 90.0  # upper bounds for loopback delivery, never performance assertions


def sha(model: bytes) -> bytes:
    return hashlib.sha256(model).digest()


@pytest.fixture
def publisher(broker: MosquittoProcess) -> Iterator[MqttLink]:
    link = MqttLink(fast_config(broker), "patch-publisher")
    link.start()
    assert link.wait_ready(WAIT)
    try:
        yield link
    finally:
        link.stop()


def make_board(tmp_path: Path, name: str, patch: bool) -> EmulatedBoard:
    data = load_local_data(DataSection(source="digits", shard="0/10"))
    spec = BoardSpec(baud=BAUD, board_id=name, patch=patch)
    return EmulatedBoard(tmp_path / f"{name}.flash", spec, data=data).start()


def test_a_new_version_reaches_a_board_as_its_patch_and_the_others_whole(
    broker: MosquittoProcess, publisher: MqttLink, tmp_path: Path, digits: DataSplit, digits_mlp: Graph
) -> None:
    v0 = write_graph(digits_mlp)
    foreign = moved(v0, 30)  # what the patching board ran before it was bridged: no version the bridge has
    v1 = moved(v0, 31)
    trainable = trainable_spec(digits_mlp)
    patching, whole = make_board(tmp_path, "mcu-p", True), make_board(tmp_path, "mcu-w", False)
    with BoardDriver(patching.path, baud=BAUD) as driver:
        driver.hello()
        driver.send_model(foreign)
    settings = MemberSettings(device_id="", federation=FED, storage=tmp_path / "bridge",
                              broker=fast_config(broker, protocol="auto"), resend_after=5.0,
                              trust=MemberTrust.insecure())  # fmt: skip
    bridge = Bridge([PortSpec(b.path) for b in (patching, whole)], settings, baud=BAUD, heartbeat=0.5).start()
    try:
        # Version 0, whole on MQTT: the patching board runs a version the bridge never had, so it too gets it whole.
        manifest0, chunks0 = make_manifest(v0, trainable, 4096, federation=FED)
        publish_model(publisher, TOPICS, manifest0, chunks0)
        wait_for(lambda: patching.model_version == sha(v0) and whole.model_version == sha(v0), WAIT,
                 "both boards on version 0")  # fmt: skip
        wait_for(lambda: {"mcu-p", "mcu-w"} <= set(bridge.members), WAIT, "both boards bridged")
        p, w = bridge.members["mcu-p"], bridge.members["mcu-w"]
        wait_for(lambda: p.transfers == 1 and w.transfers == 1, WAIT, "the bridge's count of the transfers")
        assert (p.patch_transfers, p.patch_fallbacks) == (0, 0)
        assert patching.received == {"model": len(foreign) + len(v0), "patch": 0}

        # Version 1 as the gateway publishes it: a manifest carrying its patch against version 0, no chunk.
        manifest1, _ = make_manifest(v1, trainable, 4096, parent=sha(v0), federation=FED)
        patch = wire.make_patch(v0, v1)
        assert patch is not None
        manifest1 = dataclasses.replace(manifest1, patch=patch)
        assert publisher.publish(TOPICS.manifest, wire.encode(manifest1), retain=True, timeout=WAIT)
        wait_for(lambda: patching.model_version == sha(v1) and whole.model_version == sha(v1), WAIT,
                 "both boards on version 1")  # fmt: skip
        wait_for(lambda: p.transfers == 2 and w.transfers == 2, WAIT, "the bridge's count of the transfers")

        sent = len(wire.encode(patch))
        report = p.last_transfer
        assert report is not None and report.kind == "patch" and report.payload_bytes == sent
        assert (p.patch_transfers, p.patch_fallbacks) == (1, 0)
        assert patching.received["patch"] == sent  # the board's receive log: the patch, not the model
        assert patching.installs[-1] == ("patch", sha(v1))
        assert report.line_bytes * 20 < len(v1)  # on the serial line, frames included: under a 20th of the model
        assert w.patch_transfers == 0 and whole.received == {"model": len(v0) + len(v1), "patch": 0}
        assert w.last_transfer is not None and w.last_transfer.line_bytes > len(v1)

        x = quantize_input(digits_mlp, digits.test.x[:10])
        host = default_backend().load(v1).run_batch(x)[0]
        with p._line:  # the bridge's own lock on the serial line: no heartbeat in between
            got = [p.driver.infer(x[i]).output for i in range(len(x))]
        for i in range(len(x)):
            np.testing.assert_array_equal(got[i], host[i].reshape(-1))
    finally:
        bridge.stop()
        patching.stop()
        whole.stop()
