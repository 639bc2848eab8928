"""One identity, one client: device ids unique by default, duplicates and second gateways stopped with a clear error.

Real processes (`tinyfed device run`, `bridge run`, `gateway run`) on a real Mosquitto. This machine's
Mosquitto (2.0.11) drops the older of two clients with one id without telling it why (MQTT 5's "Session
taken over" came in 2.0.15), so these runs show the claim on the id at work; the reason code's path is
checked with paho's own reason-code object.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime import wire
from edge_runtime.device_config import DeviceConfig, default_device_id
from edge_runtime.errors import ExitCode
from edge_runtime.model.graph import Graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import ClientIdConflict, MqttLink
from edge_runtime.transport.topics import Topics

from .helpers import INSECURE_TOML, Lines, Recorder, fast_config, wait_for, watch_presence

WAIT = 60.0  # start-up imports numpy and an interpreter: upper bounds only, never performance assertions
TINYFED = [sys.executable, "-m", "tinyfed"]


def watch_claims(broker: MosquittoProcess, client_id: str, federation: str = "ids") -> tuple[MqttLink, Recorder[int]]:
    """A link recording the claims (not the probes) made on ``client_id``: a process holds its id once it claimed it."""
    claims: Recorder[int] = Recorder()

    def on_claim(topic: str, payload: bytes) -> None:
        message = wire.decode(payload, expect=wire.Presence)
        if message.online:
            claims.append(message.seq)

    link = MqttLink(fast_config(broker), f"claims-of-{client_id}")
    link.subscribe(Topics(federation).claim(client_id), on_claim)
    link.start()
    assert link.wait_ready(WAIT)
    return link, claims


# -- a device id unique by default ---------------------------------------------------------------------------------
def test_a_default_device_id_is_the_host_name_and_digits_of_this_machine_alone(tmp_path: Path) -> None:
    def machine(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text + "\n")
        return path

    one = machine("one", "3d1219c7c4c5404aaa1f6d2a48adfda4")
    other = machine("other", "0123456789abcdef0123456789abcdef")
    first = default_device_id(tmp_path / "a", "raspberrypi", [one])
    assert first.startswith("raspberrypi-") and len(first) == len("raspberrypi-") + 8
    assert first == default_device_id(
        tmp_path / "b", "raspberrypi.local", [one]
    )  # stable: the machine's, not the disk's
    assert default_device_id(tmp_path / "a", "raspberrypi", [other]) != first  # another Pi, another id
    assert "3d1219c7" not in first  # derived from the machine id, not a piece of it
    # D-Bus's copy stands in for systemd's; a first-boot placeholder is no id at all.
    assert default_device_id(tmp_path / "a", "raspberrypi", [tmp_path / "missing", one]) == first
    blank = machine("blank", "uninitialized")
    kept = default_device_id(tmp_path / "c", "raspberrypi", [blank])
    assert kept == default_device_id(tmp_path / "c", "raspberrypi", [blank])  # random once, then kept in storage
    assert (tmp_path / "c" / "device-id-suffix").read_text() == kept.rsplit("-", 1)[1]
    assert default_device_id(tmp_path / "d", "raspberrypi", [blank]) != kept  # and unlike another storage's
    assert default_device_id(tmp_path / "a", "my_host!", [one]).startswith("my-host-")  # only topic-safe characters
    config = DeviceConfig.from_mapping({"device": {"storage": str(tmp_path / "e")}}, env={})
    assert config.device.id == default_device_id(tmp_path / "e")


# -- two devices with one id ---------------------------------------------------------------------------------------
def device_config(folder: Path, url: str) -> Path:
    """A device with no [device] id: it takes the default, which two processes on one machine share."""
    folder.mkdir()
    path = folder / "device.toml"
    path.write_text(
        f'[device]\nfederation = "ids"\nstorage = "{folder / "storage"}"\nconnect_timeout = 10.0\n'
        f'[data]\nsource = "digits"\nshard = "0/10"\n'
        f'[broker]\nurl = "{url}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n' + INSECURE_TOML
    )
    return path


def start(*args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = subprocess.Popen([*TINYFED, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc.stdout, WAIT), Lines(proc.stderr, WAIT)


def test_two_devices_with_one_id_the_first_stops_with_a_clear_error_and_the_second_carries_on(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    device_id = default_device_id(tmp_path / "a" / "storage")
    assert device_id.startswith(socket.gethostname().split(".")[0])
    watcher, presence = watch_presence(broker, Topics("ids").presence(device_id), "watcher")
    assert watcher.wait_ready(WAIT)
    claimer, claims = watch_claims(broker, f"tinyfed-ids-{device_id}")
    first, first_out, first_err = start("device", "run", "--config", str(device_config(tmp_path / "a", broker.url)))
    second = None
    try:
        first_out.wait_for(f"device {device_id} of federation ids", "the first device to start under its default id")
        presence.wait_until(lambda got: any(p.online for p in got), WAIT, "the first device's birth")
        claims.wait_until(lambda got: len(got) >= 1, WAIT, "the first device to claim its id")
        second, _, second_err = start("device", "run", "--config", str(device_config(tmp_path / "b", broker.url)))
        assert first.wait(WAIT) == ExitCode.ID_CONFLICT, first_err.text()
        error = first_err.text().strip().splitlines()[-1]
        assert error.startswith("tinyfed: error: another MQTT client connected to")
        assert f"'tinyfed-ids-{device_id}'" in error and f"uses the device id '{device_id}'" in error
        assert "give each its own id" in error
        assert second.poll() is None, second_err.text()  # the newer one keeps the id, and says it is alive
        presence.wait_until(lambda got: got[-1].online, WAIT, "the second device's birth to stand")
        second.send_signal(signal.SIGTERM)
        assert second.wait(WAIT) == 0, second_err.text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        watcher.stop()
        claimer.stop()


@pytest.mark.parametrize("at_once", [False, True], ids=["one-after-the-other", "at-the-same-moment"])
def test_of_two_links_with_one_id_exactly_one_keeps_it(broker: MosquittoProcess, at_once: bool) -> None:
    topic = Topics("ids").claim("twin")
    links = [MqttLink(fast_config(broker), "twin", claim_topic=topic) for _ in range(2)]
    try:
        links[0].start()
        if not at_once:
            assert links[0].claimed.wait(WAIT)
        links[1].start()
        wait_for(lambda: any(link.fatal for link in links), WAIT, "one of the twins to stop")
        stopped, kept = sorted(links, key=lambda link: link.fatal is None)
        assert isinstance(stopped.fatal, ClientIdConflict) and "'twin'" in str(stopped.fatal)
        assert kept.wait_connected(WAIT) and kept.claimed.wait(WAIT)
        if not at_once:
            assert kept is links[1]  # the newer one keeps the id, as with MQTT 5's "Session taken over"
        assert kept.fatal is None
    finally:
        for link in links:
            link.stop()


def test_a_restart_under_the_same_id_is_no_conflict(broker: MosquittoProcess) -> None:
    topic = Topics("ids").claim("again")
    before = MqttLink(fast_config(broker), "again", claim_topic=topic).start()
    assert before.claimed.wait(WAIT)
    before.stop()
    after = MqttLink(fast_config(broker), "again", claim_topic=topic).start()
    try:
        assert after.claimed.wait(WAIT) and after.claim is not None and before.claim is not None
        assert after.claim > before.claim and after.fatal is None
    finally:
        after.stop()


def test_the_brokers_session_taken_over_stops_the_link_for_good(broker: MosquittoProcess) -> None:
    link = MqttLink(fast_config(broker), "taken")
    link.start()
    try:
        assert link.wait_ready(WAIT)
        # What paho hands over when a broker (Mosquitto >= 2.0.15, EMQX, HiveMQ) sends DISCONNECT 0x8E.
        link._on_disconnect(link._client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
        assert isinstance(link.fatal, ClientIdConflict) and "Session taken over" in str(link.fatal)
        with pytest.raises(ClientIdConflict):
            link.require_connected(0.1)
        assert link._thread is not None
        link._thread.join(WAIT)
        assert not link._thread.is_alive(), "the link went on reconnecting"
    finally:
        link.stop()


# -- a board whose id another client takes -------------------------------------------------------------------------
def test_bridge_run_stops_with_a_clear_error_when_another_client_takes_a_boards_id(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    pytest.importorskip("serial")
    pytest.importorskip("tflite_micro")
    from edge_runtime.agent import load_local_data
    from edge_runtime.device_config import DataSection
    from hil.board import BoardSpec, EmulatedBoard

    board = EmulatedBoard(
        tmp_path / "b.flash",
        BoardSpec(baud=921600, board_id="mcu-7"),
        data=load_local_data(DataSection(source="digits", shard="0/10")),
    ).start()
    watcher, presence = watch_presence(broker, Topics("ids").presence("mcu-7"), "watcher")
    options = ["--port", board.path, "--baud", "921600", "--broker", broker.url, "--federation", "ids", "--insecure"]
    bridge, _, bridge_err = start(
        "bridge", "run", *options, "--storage", str(tmp_path / "bridge"), "--heartbeat", "0.5"
    )
    other = MqttLink(fast_config(broker), "tinyfed-ids-mcu-7", claim_topic=Topics("ids").claim("tinyfed-ids-mcu-7"))
    claimer, claims = watch_claims(broker, "tinyfed-ids-mcu-7")
    try:
        presence.wait_until(lambda got: any(p.online for p in got), WAIT, "the board's birth through the bridge")
        claims.wait_until(lambda got: len(got) >= 1, WAIT, "the bridge to claim the board's id")
        other.start()  # a second bridge of the same board id, say
        assert bridge.wait(WAIT) == ExitCode.ID_CONFLICT, bridge_err.text()
        error = bridge_err.text().strip().splitlines()[-1]
        assert "tinyfed: error: another MQTT client connected" in error and "'tinyfed-ids-mcu-7'" in error
        assert "device id 'mcu-7'" in error
        assert other.connected.is_set() and other.fatal is None  # the newer client keeps the id
    finally:
        if bridge.poll() is None:
            bridge.kill()
        other.stop()
        watcher.stop()
        claimer.stop()
        board.stop()


# -- one gateway per federation ------------------------------------------------------------------------------------
def gateway_toml(path: Path, storage: Path, model: Path, url: str) -> Path:
    path.write_text(
        f'[gateway]\nfederation = "ids"\nstorage = "{storage}"\nmodel = "{model}"\n'
        f'[broker]\nurl = "{url}"\nbackoff_base = 0.05\nbackoff_cap = 0.5\n' + INSECURE_TOML
    )
    return path


def test_a_second_gateway_is_refused_and_one_that_takes_the_gateways_id_stops_the_running_one(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    model = tmp_path / "initial.tflite"
    model.write_bytes(write_graph(digits_mlp))
    configs = [gateway_toml(tmp_path / f"g{i}.toml", tmp_path / f"gw{i}", model, broker.url) for i in range(3)]
    claimer, claims = watch_claims(broker, "tinyfed-gateway-ids")
    running, running_out, running_err = start("gateway", "run", "--config", str(configs[0]))
    procs = [running]
    rogue = None
    try:
        running_out.wait_for("gateway of federation ids", "the first gateway to start")
        claims.wait_until(lambda got: len(got) >= 1, WAIT, "the gateway to claim its id")
        # A second gateway, with storage of its own (another machine, say), is refused before it connects.
        second, _, second_err = start("gateway", "run", "--config", str(configs[1]))
        procs.append(second)
        assert second.wait(WAIT) == ExitCode.ID_CONFLICT, second_err.text()
        error = second_err.text().strip().splitlines()[-1]
        assert error.startswith("tinyfed: error: another gateway of federation 'ids' is running on host")
        assert str(tmp_path / "gw0") in error and socket.gethostname() in error and "Stop it first" in error
        assert running.poll() is None, running_err.text()  # the running one never noticed

        # A client that skips the check (an older gateway, say) and takes the id: the running gateway stops.
        rogue = MqttLink(
            fast_config(broker), "tinyfed-gateway-ids", claim_topic=Topics("ids").claim("tinyfed-gateway-ids")
        )
        rogue.start()
        assert running.wait(WAIT) == ExitCode.ID_CONFLICT, running_err.text()
        error = running_err.text().strip().splitlines()[-1]
        assert "another MQTT client connected" in error and "'tinyfed-gateway-ids'" in error
        assert "a second gateway of federation 'ids'" in error
        rogue.stop()

        # The broker announced the stopped one gone (its last will): a gateway starts again.
        third, third_out, third_err = start("gateway", "run", "--config", str(configs[2]))
        procs.append(third)
        third_out.wait_for("gateway of federation ids", "a gateway to start once the others are gone")
        third.send_signal(signal.SIGTERM)
        assert third.wait(WAIT) == 0, third_err.text()
        # It said it stopped, so the first one's storage starts a gateway again at once.
        again, again_out, again_err = start("gateway", "run", "--config", str(configs[0]))
        procs.append(again)
        again_out.wait_for("gateway of federation ids", "the first gateway to start again")
        again.send_signal(signal.SIGTERM)
        assert again.wait(WAIT) == 0, again_err.text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if rogue is not None:
            rogue.stop()
        claimer.stop()


def test_a_presence_left_by_this_storages_last_run_does_not_block_its_restart(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    model = tmp_path / "initial.tflite"
    model.write_bytes(write_graph(digits_mlp))
    storage = tmp_path / "gw"
    config = gateway_toml(tmp_path / "g.toml", storage, model, broker.url)
    # The power went while the gateway ran: the broker still holds its "alive" until the keepalive runs out.
    left = wire.Presence(f"{socket.gethostname()}:{storage.resolve()}", True, 4242, int(time.time()) - 60)
    writer = MqttLink(fast_config(broker), "writer")
    writer.start()
    try:
        assert writer.wait_ready(WAIT)
        assert writer.publish(Topics("ids").gateway_presence, wire.encode(left), retain=True, timeout=WAIT)
    finally:
        writer.stop()
    other = gateway_toml(tmp_path / "o.toml", tmp_path / "other", model, broker.url)
    refused = subprocess.run([*TINYFED, "gateway", "run", "--config", str(other)], capture_output=True, text=True,
                             timeout=WAIT)  # fmt: skip
    assert refused.returncode == ExitCode.ID_CONFLICT and "(process 4242, since" in refused.stderr
    again, again_out, again_err = start("gateway", "run", "--config", str(config))  # its own storage: no one else's
    try:
        again_out.wait_for("gateway of federation ids", "the gateway to start again on its storage")
        again.send_signal(signal.SIGTERM)
        assert again.wait(WAIT) == 0, again_err.text()
    finally:
        if again.poll() is None:
            again.kill()
