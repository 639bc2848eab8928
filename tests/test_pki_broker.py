"""The provisioned broker side, on a real Mosquitto with TLS, client certificates, the ACL and the CRL.

Every client here is an ``MqttLink`` (paho, MQTT 5) configured from what ``tinyfed provision`` wrote.
What the broker refuses is observed three ways: a refused publish gets PUBACK "Not authorized"
(``publish`` returns False); a refused TLS handshake is in the broker's log and the link never
connects; a message a client may not read never reaches it, shown by a sentinel that the same
route delivers after it (Mosquitto keeps each session's messages in the order it routed them).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_runtime.transport.mqtt import BrokerConfig, ClientIdConflict, MqttLink
from edge_runtime.transport.topics import Topics, member_client_id
from gateway.config import GatewayConfig
from gateway.pki import acl, provision
from gateway.pki.registry import RegistryWatcher, read_registry
from gateway.service import Gateway, SecondGateway
from tests.conftest import MOSQUITTO
from tests.helpers import Recorder, wait_for
from tests.trust import BAD_CERTIFICATE, FEDERATION, NO_CERTIFICATE, WAIT, Secured, fast, provisioned

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (.ci/run installs it)"),
]
T = Topics(FEDERATION)
VERSION = bytes(range(8))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    layout = provisioned(tmp_path / "pki", ["dev-a", "dev-b"])
    federation = Secured.start(layout, tmp_path / "broker")
    yield federation
    federation.close()


@pytest.fixture
def links() -> Iterator[list[MqttLink]]:
    started: list[MqttLink] = []
    yield started
    for link in started:
        link.stop()


def recording(link: MqttLink, *filters: str) -> Recorder[tuple[str, bytes]]:
    seen: Recorder[tuple[str, bytes]] = Recorder()
    for topic in filters:
        link.subscribe(topic, lambda t, p: seen.append((t, p)))
    return seen


def ready(links: list[MqttLink], link: MqttLink) -> MqttLink:
    links.append(link.start())
    assert link.wait_ready(WAIT), f"{link.client_id} did not connect: {link.last_error}"
    return link


def assert_never_connects(secured: Secured, link: MqttLink, refusal: str, links: list[MqttLink]) -> None:
    """Two refused handshakes after the link started: its first attempt and a retry were both turned away."""
    before = secured.refusals(refusal)
    links.append(link.start())
    wait_for(lambda: secured.refusals(refusal) >= before + 2, WAIT, f"the broker refusing {link.client_id} twice")
    assert not link.connected.is_set()
    assert "closed the connection before answering CONNECT" in link.last_error, link.last_error


def test_a_provisioned_device_and_the_gateway_talk_over_tls(secured: Secured, links: list[MqttLink]) -> None:
    """The provisioned device.toml and gateway [broker] load as written and connect; the allowed routes work."""
    config = secured.device_config("dev-a")
    assert config.device.id == "dev-a" and config.device.federation == FEDERATION
    assert config.broker.url == secured.broker.url  # mqtts://127.0.0.1:<the port init was given>
    gateway = secured.gateway_link()
    at_gateway = recording(gateway, T.all_updates, T.all_presence)
    ready(links, gateway)
    device = secured.device_link("dev-a")
    at_device = recording(device, T.task("dev-a"), T.receipt("dev-a"), T.manifest, T.all_chunks, T.state)
    ready(links, device)

    assert device.publish(T.update("dev-a"), b"update", timeout=WAIT)
    assert device.publish(T.presence("dev-a"), b"birth", retain=True, timeout=WAIT)
    at_gateway.wait_until(lambda s: {t for t, _ in s} == {T.update("dev-a"), T.presence("dev-a")}, WAIT,
                          "the gateway receiving the device's update and birth")  # fmt: skip
    for topic in (T.task("dev-a"), T.receipt("dev-a"), T.chunk(VERSION, 0), T.manifest, T.state):
        assert gateway.publish(topic, b"from the gateway", timeout=WAIT), topic
    want = {T.task("dev-a"), T.receipt("dev-a"), T.chunk(VERSION, 0), T.manifest, T.state}
    at_device.wait_until(lambda s: {t for t, _ in s} == want, WAIT, "the device receiving all five")


def test_clients_without_a_federation_certificate_cannot_connect(
    secured: Secured, tmp_path: Path, links: list[MqttLink]
) -> None:
    url, ca = secured.broker.url, str(secured.layout.broker_ca)
    assert_never_connects(secured, MqttLink(fast(BrokerConfig(url=url, ca_file=ca)), "no-cert"), NO_CERTIFICATE, links)

    stranger = provisioned(tmp_path / "other", ["dev-a"])  # another federation's CA, and a device named alike
    bundle = stranger.bundle("dev-a")
    foreign = BrokerConfig(url=url, ca_file=ca, cert_file=str(bundle / "tls.crt"), key_file=str(bundle / "tls.key"))
    assert_never_connects(secured, MqttLink(fast(foreign), "other-ca"), BAD_CERTIFICATE, links)


def test_a_device_cannot_publish_on_nor_read_another_devices_topics(secured: Secured, links: list[MqttLink]) -> None:
    gateway = secured.gateway_link()
    at_gateway = recording(gateway, T.all_updates, T.all_presence)
    ready(links, gateway)
    b = secured.device_link("dev-b")
    at_b = recording(b, T.task("dev-b"))
    ready(links, b)
    a = secured.device_link("dev-a")
    # Subscriptions to what is not dev-a's are granted by Mosquitto (MQTT allows it) but deliver nothing.
    at_a = recording(a, T.task("dev-b"), T.receipt("dev-b"), T.all_tasks, T.all_updates, T.all_presence)
    ready(links, a)

    # Publishing as dev-b: the broker answers PUBACK "Not authorized" and drops the message.
    assert not a.publish(T.update("dev-b"), b"forged update", timeout=WAIT)
    assert not a.publish(T.presence("dev-b"), b"forged death", retain=True, timeout=WAIT)
    assert a.connected.is_set()  # refused, not disconnected
    assert a.publish(T.update("dev-a"), b"sentinel", timeout=WAIT)  # dev-a's own, after the forged ones
    at_gateway.wait_until(lambda s: (T.update("dev-a"), b"sentinel") in s, WAIT, "dev-a's own update")
    assert at_gateway.items == [(T.update("dev-a"), b"sentinel")]

    # Reading dev-b's: the gateway's task and receipt for dev-b and dev-b's update are routed past dev-a.
    assert gateway.publish(T.task("dev-b"), b"task for b", timeout=WAIT)
    assert gateway.publish(T.receipt("dev-b"), b"receipt for b", timeout=WAIT)
    at_b.wait_until(lambda s: s == [(T.task("dev-b"), b"task for b")], WAIT, "dev-b receiving its task")
    assert b.publish(T.update("dev-b"), b"b's update", timeout=WAIT)
    at_gateway.wait_until(lambda s: (T.update("dev-b"), b"b's update") in s, WAIT, "the gateway receiving b's update")
    assert gateway.publish(T.task("dev-a"), b"sentinel for a", timeout=WAIT)  # routed to dev-a after all of it
    at_a.wait_until(lambda s: (T.task("dev-a"), b"sentinel for a") in s, WAIT, "dev-a receiving its own task")
    assert {t for t, _ in at_a.items} == {T.task("dev-a")}, at_a.items


def test_a_device_cannot_publish_models_tasks_receipts_or_state_and_the_gateway_can(
    secured: Secured, links: list[MqttLink]
) -> None:
    gateway = secured.gateway_link()
    relay = recording(gateway, T.update("dev-a"))
    ready(links, gateway)
    b = secured.device_link("dev-b")
    at_b = recording(b, T.manifest, T.all_chunks, T.state, T.task("dev-b"), T.receipt("dev-b"))
    ready(links, b)
    a = ready(links, secured.device_link("dev-a"))

    forged = [T.manifest, T.chunk(VERSION, 0), T.state, T.task("dev-b"), T.receipt("dev-b"),
              T.task("dev-a"), T.receipt("dev-a")]  # fmt: skip
    for topic in forged:
        assert not a.publish(topic, b"forged", retain=True, timeout=WAIT), f"dev-a could publish on {topic}"
    # Everything dev-a sent was handled before its next packet: once the gateway has dev-a's update, anything
    # forged would already be queued for dev-b, ahead of the gateway's sentinel state.
    assert a.publish(T.update("dev-a"), b"after the forgeries", timeout=WAIT)
    relay.wait_until(lambda s: len(s) == 1, WAIT, "the gateway receiving dev-a's update")
    assert gateway.publish(T.state, b"sentinel", retain=True, timeout=WAIT)
    at_b.wait_until(lambda s: (T.state, b"sentinel") in s, WAIT, "dev-b receiving the gateway's state")
    assert at_b.items == [(T.state, b"sentinel")]

    for topic in (T.chunk(VERSION, 0), T.manifest, T.task("dev-b"), T.receipt("dev-b")):
        assert gateway.publish(topic, b"genuine", retain=topic in (T.manifest, T.chunk(VERSION, 0)), timeout=WAIT)
    want = {(T.state, b"sentinel")} | {(t, b"genuine") for t in (T.chunk(VERSION, 0), T.manifest, T.task("dev-b"),
                                                                 T.receipt("dev-b"))}  # fmt: skip
    at_b.wait_until(lambda s: set(s) == want, WAIT, "dev-b receiving the gateway's model, task and receipt")


def test_a_device_cannot_take_over_the_gateways_session_by_its_client_id(
    secured: Secured, links: list[MqttLink]
) -> None:
    """use_username_as_clientid: the client id a device asks for is replaced by its certificate's name."""
    gateway = secured.gateway_link()
    seen = recording(gateway, T.update("dev-a"))
    ready(links, gateway)
    impostor = MqttLink(fast(secured.device_config("dev-a").broker), provision.gateway_identity(FEDERATION))
    ready(links, impostor)
    assert impostor.publish(T.update("dev-a"), b"still the gateway's session?", timeout=WAIT)
    seen.wait_until(lambda s: len(s) == 1, WAIT, "the gateway, still connected, receiving the update")
    assert gateway.connected.is_set()


def test_a_revoked_device_is_refused_at_its_next_connection(secured: Secured, links: list[MqttLink]) -> None:
    watcher = RegistryWatcher(secured.layout.registry)
    assert watcher.current().active_key("dev-b") is not None
    gateway = secured.gateway_link()
    at_gateway = recording(gateway, T.all_updates)
    ready(links, gateway)
    b = ready(links, secured.device_link("dev-b"))
    a = ready(links, secured.device_link("dev-a"))

    provision.revoke(secured.layout.root, "dev-b", reason="stolen")
    secured.broker.reload()

    # The gateway's side: its registry reloads by itself and no longer has a valid key for dev-b.
    assert watcher.current().active_key("dev-b") is None and watcher.reloads == 1
    entry = read_registry(secured.layout.registry).revoked()[0]
    assert (entry.device, entry.reason) == ("dev-b", "stolen")
    # The open connection: still up (Mosquitto does not re-check a TLS session), but with no ACL block left it
    # may publish nothing, and nothing is delivered to it.
    assert not b.publish(T.update("dev-b"), b"after revocation", timeout=WAIT)
    assert b.connected.is_set()
    # Its next connection: refused at the TLS handshake (the CRL), before MQTT.
    b.stop()
    assert_never_connects(secured, secured.device_link("dev-b"), BAD_CERTIFICATE, links)
    # Everyone else carries on, and reconnects as before.
    assert a.publish(T.update("dev-a"), b"a carries on", timeout=WAIT)
    at_gateway.wait_until(lambda s: (T.update("dev-a"), b"a carries on") in s, WAIT, "dev-a's update")
    a.stop()
    ready(links, secured.device_link("dev-a"))
    assert all(t != T.update("dev-b") for t, _ in at_gateway.items)


def test_what_the_crl_and_the_acl_each_enforce(secured: Secured, links: list[MqttLink]) -> None:
    """The ACL alone mutes a device but lets it connect; the CRL alone refuses its connection but leaves an open
    one its rights. `provision revoke` writes both."""
    layout = secured.layout
    meta = layout.read_meta()
    full_acl = layout.acl.read_bytes()
    layout.acl.write_text(acl.render(meta.federation, meta.gateway_identity, ["dev-a"]))  # dev-b's block gone
    secured.broker.reload()
    b = ready(links, secured.device_link("dev-b"))  # a new connection is accepted...
    assert not b.publish(T.update("dev-b"), b"muted", timeout=WAIT)  # ...and may do nothing
    b.stop()

    layout.acl.write_bytes(full_acl)
    b = ready(links, secured.device_link("dev-b"))
    provision.revoke(layout.root, "dev-b")  # the CRL now lists dev-b; put the ACL back as it was
    layout.acl.write_bytes(full_acl)
    secured.broker.reload()
    assert b.publish(T.update("dev-b"), b"open connection keeps its rights", timeout=WAIT)
    b.stop()
    assert_never_connects(secured, secured.device_link("dev-b"), BAD_CERTIFICATE, links)


def test_ed25519_tls_certificates_work_between_mosquitto_and_python(tmp_path: Path, links: list[MqttLink]) -> None:
    """Mosquitto 2.0.11 and Python's ssl (OpenSSL 3) take Ed25519 certificates; P-256 stays the default because
    other TLS stacks (mbedTLS, BearSSL, older OpenSSL and Java) do not."""
    secured = Secured.start(provisioned(tmp_path / "pki", ["dev-a"], tls_key="ed25519"), tmp_path / "broker")
    try:
        gateway = secured.gateway_link()
        seen = recording(gateway, T.all_updates)
        ready(links, gateway)
        a = ready(links, secured.device_link("dev-a"))
        assert a.publish(T.update("dev-a"), b"over ed25519", timeout=WAIT)
        assert not a.publish(T.state, b"forged", timeout=WAIT)
        seen.wait_until(lambda s: len(s) == 1, WAIT, "the update")
    finally:
        for link in links:
            link.stop()
        secured.close()


def test_a_tls_link_publishes_from_other_threads_while_its_own_thread_reads(
    secured: Secured, links: list[MqttLink]
) -> None:
    """paho writes a packet from the caller's thread unless told otherwise; on an SSL socket that its network
    thread is reading at the same time, the TLS stream breaks ("bad record mac" at the broker)."""
    gateway = secured.gateway_link()
    echoes = recording(gateway, T.state)
    ready(links, gateway)
    count = 1000

    def publish(i: int) -> bool:
        return gateway.publish(T.state, i.to_bytes(2, "big") * 64, timeout=WAIT)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(publish, range(count)))
    echoes.wait_until(lambda s: len(s) == count, WAIT, f"all {count} messages back through the broker")
    assert gateway.connected.is_set() and "bad record mac" not in secured.broker.log_path.read_text()


def test_presence_claims_and_the_probe_are_granted_exactly_what_the_identity_work_uses(
    secured: Secured, links: list[MqttLink]
) -> None:
    gateway = secured.gateway_link()
    at_gateway = recording(gateway, T.gateway_presence, T.claim(gateway.client_id), T.all_updates)
    ready(links, gateway)
    a = secured.device_link("dev-a")
    claim_a = T.claim(member_client_id(FEDERATION, "dev-a"))
    at_a = recording(a, T.presence("dev-a"), claim_a, T.gateway_presence, T.claim(gateway.client_id))
    ready(links, a)
    probe = secured.probe_link()
    at_probe = recording(probe, T.gateway_presence, T.gateway_probe(probe.client_id), T.all_updates)
    ready(links, probe)

    # Each reads back what it writes on its own presence and claim (a device answers its own death with a birth).
    assert a.publish(T.presence("dev-a"), b"a's birth", retain=True, timeout=WAIT)
    assert a.publish(claim_a, b"a's claim", retain=True, timeout=WAIT)
    at_a.wait_until(lambda s: {(T.presence("dev-a"), b"a's birth"), (claim_a, b"a's claim")} <= set(s), WAIT,
                    "dev-a reading its own presence and claim")  # fmt: skip
    assert gateway.publish(T.gateway_presence, b"gateway alive", retain=True, timeout=WAIT)
    assert gateway.publish(T.claim(gateway.client_id), b"gateway claim", retain=True, timeout=WAIT)
    at_gateway.wait_until(lambda s: {(T.gateway_presence, b"gateway alive"), (T.claim(gateway.client_id),
                                                                               b"gateway claim")} <= set(s),
                          WAIT, "the gateway reading its own presence and claim")  # fmt: skip
    # The probe reads the gateway's presence and its own echo, and may write nothing else.
    assert probe.publish(T.gateway_probe(probe.client_id), b"", timeout=WAIT)
    echo = (T.gateway_probe(probe.client_id), b"")
    at_probe.wait_until(lambda s: echo in s and (T.gateway_presence, b"gateway alive") in s, WAIT,
                        "the probe's echo and the presence")  # fmt: skip
    for topic in (T.gateway_presence, T.claim(gateway.client_id), T.update("dev-a"), T.manifest):
        assert not probe.publish(topic, b"forged by the probe", timeout=WAIT), topic
    # A device may not speak for the gateway nor claim another's id; it reads neither the gateway's claim nor presence.
    for topic in (T.gateway_presence, T.claim(gateway.client_id), T.claim(member_client_id(FEDERATION, "dev-b"))):
        assert not a.publish(topic, b"forged by dev-a", timeout=WAIT), topic
    assert a.publish(T.update("dev-a"), b"sentinel", timeout=WAIT)  # routed after all of the above
    at_gateway.wait_until(lambda s: (T.update("dev-a"), b"sentinel") in s, WAIT, "dev-a's update")
    assert gateway.publish(T.claim(gateway.client_id), b"second claim", retain=True, timeout=WAIT)
    at_gateway.wait_until(lambda s: (T.claim(gateway.client_id), b"second claim") in s, WAIT, "the second claim")
    assert {t for t, _ in at_a.items} == {T.presence("dev-a"), claim_a}
    assert not any(t == T.update("dev-a") for t, _ in at_probe.items)
    assert all(p != b"forged by the probe" and p != b"forged by dev-a" for _, p in at_gateway.items)


def test_of_two_processes_with_one_devices_bundle_the_newer_keeps_the_id(
    secured: Secured, links: list[MqttLink]
) -> None:
    """Both are named dev-a by the broker (the certificate): the claims on the id settle it as on a plain broker."""
    claim = T.claim(member_client_id(FEDERATION, "dev-a"))
    first = secured.device_link("dev-a", claim_topic=claim)
    links.append(first.start())
    assert first.claimed.wait(WAIT), first.last_error
    second = secured.device_link("dev-a", claim_topic=claim)
    links.append(second.start())
    wait_for(lambda: first.fatal is not None, WAIT, "the older process to stop")
    assert isinstance(first.fatal, ClientIdConflict)
    assert second.wait_connected(WAIT) and second.claimed.wait(WAIT) and second.fatal is None


def test_a_second_gateway_is_refused_on_the_tls_broker_and_the_running_one_is_not_disturbed(
    secured: Secured, tmp_path: Path, initial_model: Path
) -> None:
    """The probe has an identity of its own: with the gateway's certificate it would have taken the running
    gateway's session (the broker names a client by its certificate)."""
    running = Gateway(GatewayConfig.from_mapping(secured.gateway_settings(tmp_path / "gw-1", initial_model), env={}))
    connects: list[float] = []
    running.link.on_connect_hooks.append(lambda: connects.append(0.0))
    running.start()
    try:
        assert running.link.claimed.wait(WAIT)
        second = Gateway(GatewayConfig.from_mapping(secured.gateway_settings(tmp_path / "gw-2", initial_model),
                                                    env={}))  # fmt: skip
        with pytest.raises(SecondGateway, match=str(tmp_path / "gw-1")):
            second.start()
        second.store.close()
        assert running.link.connected.is_set() and running.link.fatal is None
        assert connects == [0.0]  # connected once, never dropped
        assert "tinyfed-gateway-home-probe" in secured.broker.log_path.read_text(errors="replace")
    finally:
        running.stop()
