"""`tinyfed provision` on disk: what it writes, with which modes, what it refuses, and that nothing is lost.

The broker's side of the same files (TLS, ACL, CRL on a real Mosquitto) is tests/test_pki_broker.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_runtime import wire
from edge_runtime.device_config import DeviceConfig
from edge_runtime.keys import KeyFileError, key_id, load_public_key, load_signer, load_signing_key, public_raw
from edge_runtime.transport.broker import TlsListener
from edge_runtime.transport.topics import Topics
from edge_runtime.wire.limits import Limits
from gateway.pki import acl, provision
from gateway.pki import registry as registry_module
from gateway.pki.files import ProvisionError
from gateway.pki.layout import Layout
from gateway.pki.registry import RegistryError, RegistryWatcher, read_registry
from gateway.trust import GatewayTrust
from tests.trust import FEDERATION, install, installed, provisioned
from tinyfed.cli import main

SECRETS = {"ca.key", "server.key", "tls.key", "signing.key", "probe.key"}


def tree(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_key_is_0600_every_directory_0700_and_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    provision.add_device(layout.root, "dev-b", make_archive=True)
    files = [p for p in layout.root.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= SECRETS | {"crl.pem", "acl", "mosquitto.conf", "devices.json", "device.toml"}
    for path in files:
        secret = path.name in SECRETS or path.name.endswith(".tar.gz")
        assert mode(path) == (0o600 if secret else 0o644), f"{path}: {mode(path):04o}"
    for path in [layout.root, *(p for p in layout.root.rglob("*") if p.is_dir())]:
        assert mode(path) == 0o700, f"{path}: {mode(path):04o}"
    for path in files:
        if path.suffix == ".key":
            assert b"-----BEGIN PRIVATE KEY-----" in path.read_bytes()  # PKCS#8, unencrypted, for Mosquitto too

    ca = load_cert(layout.ca_cert)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey) and ca_key.curve.name == "secp256r1"
    server = load_cert(layout.server_cert)
    server.verify_directly_issued_by(ca)
    hosts = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(h) for h in hosts.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert hosts.get_values_for_type(x509.DNSName) == ["localhost"]
    gateway = load_cert(layout.gateway_dir / "tls.crt")
    gateway.verify_directly_issued_by(ca)
    assert cn(gateway) == provision.gateway_identity(FEDERATION) == f"tinyfed-gateway-{FEDERATION}"
    probe = load_cert(layout.gateway_dir / "probe.crt")  # a second identity: a starting gateway's look (acl.py)
    probe.verify_directly_issued_by(ca)
    assert cn(probe) == f"tinyfed-gateway-{FEDERATION}-probe"
    device = load_cert(layout.bundle("dev-b") / "tls.crt")
    device.verify_directly_issued_by(ca)
    assert cn(device) == "dev-b"  # the MQTT username Mosquitto takes from it, and the ACL's `user`
    assert ExtendedKeyUsageOID.CLIENT_AUTH in device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_a_bundle_round_trips_into_a_device_config_and_its_keys_into_the_registry(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    here = installed(layout, "dev-a")
    config = DeviceConfig.load(here / "device.toml", env={})
    assert (config.device.id, config.device.federation) == ("dev-a", FEDERATION)
    assert config.device.storage == str(here / "storage")
    assert config.broker.url == f"mqtts://127.0.0.1:{layout.read_meta().port}" and config.broker.protocol == "5"
    assert config.broker.endpoint() == ("127.0.0.1", layout.read_meta().port, True)
    assert (config.broker.ca_file, config.broker.cert_file, config.broker.key_file) == tuple(
        str(here / n) for n in ("ca.crt", "tls.crt", "tls.key")
    )
    assert config.trust.signing_key == str(here / "signing.key")
    assert config.trust.gateway_key == str(here / "gateway.pub")

    # The device signs with its key; the gateway finds that key in its registry by the id the signature names.
    signer = load_signer(config.trust.signing_key)
    entry = read_registry(layout.registry).active_key("dev-a")
    assert entry is not None and signer.key_id == entry.key_id == key_id(entry.key)
    signed = wire.sign(b"an update", signer)
    opened = wire.open_envelope(signed, Limits(), wire.Ed25519Verifier({entry.key_id: entry.public_key()}))
    assert opened.verified and opened.payload == b"an update"
    # The pinned gateway key is the gateway's signing key.
    gateway = load_signing_key(layout.gateway_dir / "signing.key")
    assert public_raw(load_public_key(config.trust.gateway_key)) == public_raw(gateway.public_key())
    assert entry.tls_serial == load_cert(here / "tls.crt").serial_number


def test_the_default_bundle_points_at_etc_tinyfed_and_its_archive_holds_the_same_files(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    provision.init(root, FEDERATION, ["hub.local"])
    provision.add_device(root, "pi-kitchen", make_archive=True)
    layout = Layout(root)
    config = DeviceConfig.load(layout.bundle("pi-kitchen") / "device.toml", env={})
    assert config.broker.url == "mqtts://hub.local:8883"
    assert config.broker.key_file == "/etc/tinyfed/tls.key" and config.trust.signing_key == "/etc/tinyfed/signing.key"
    assert config.device.storage == "/var/lib/tinyfed"
    with tarfile.open(layout.archive("pi-kitchen")) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"ca.crt", "tls.crt", "tls.key", "signing.key", "gateway.pub", "device.toml"}
        for name, member in members.items():
            assert member.isfile() and (member.uid, member.gid) == (0, 0)
            assert member.mode == (0o600 if name in SECRETS else 0o644), name
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == (layout.bundle("pi-kitchen") / name).read_bytes()


def test_the_broker_configuration_and_acl_come_from_the_listener_and_the_topic_layout(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    provision.init(root, FEDERATION, ["hub.local"], port=8884, broker_dir="/srv/mqtt/tinyfed")
    provision.add_device(root, "dev-a")
    layout = Layout(root)
    there = Path("/srv/mqtt/tinyfed")
    listener = TlsListener(there / "ca.crt", there / "server.crt", there / "server.key", there / "acl",
                           there / "crl.pem")  # fmt: skip
    conf = layout.mosquitto_conf.read_text()
    assert listener.mosquitto_config(8884) in conf
    settings = [line for line in conf.splitlines() if line and not line.startswith("#")]
    for wanted in ("listener 8884", "require_certificate true", "use_identity_as_username true",
                   "use_username_as_clientid true", "allow_anonymous false", "crlfile /srv/mqtt/tinyfed/crl.pem",
                   "acl_file /srv/mqtt/tinyfed/acl"):  # fmt: skip
        assert wanted in settings, wanted

    t = Topics(FEDERATION)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in layout.acl.read_text().split("\n\n")[1:]}
    assert blocks["user dev-a"] == [
        f"topic write {t.update('dev-a')}",
        f"topic readwrite {t.presence('dev-a')}",
        f"topic read {t.task('dev-a')}",
        f"topic read {t.receipt('dev-a')}",
        f"topic read {t.state}",
        f"topic read {t.manifest}",
        f"topic read {t.all_chunks}",
        f"topic readwrite {t.claim(f'tinyfed-{FEDERATION}-dev-a')}",
    ]
    identity = provision.gateway_identity(FEDERATION)
    gateway = blocks[f"user {identity}"]
    assert f"topic write {t.all_tasks}" in gateway and f"topic read {t.all_updates}" in gateway
    assert f"topic readwrite {t.manifest}" in gateway and f"topic readwrite {t.all_chunks}" in gateway
    assert f"topic readwrite {t.gateway_presence}" in gateway and f"topic readwrite {t.claim(identity)}" in gateway
    assert blocks[f"user {identity}-probe"] == [f"topic read {t.gateway_presence}",
                                                f"topic readwrite {t.all_gateway_probes}"]  # fmt: skip
    assert set(blocks) == {"user dev-a", f"user {identity}", f"user {identity}-probe"}
    assert acl.render(FEDERATION, provision.gateway_identity(FEDERATION), ["dev-a"]) == layout.acl.read_text()


def test_existing_material_is_never_overwritten_and_force_retires_it(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    provision.init(root, FEDERATION, ["127.0.0.1"])
    provision.add_device(root, "dev-a", make_archive=True)
    before = tree(root)

    with pytest.raises(ProvisionError, match=f"already holds federation {FEDERATION}"):
        provision.init(root, FEDERATION, ["127.0.0.1"])
    with pytest.raises(ProvisionError, match="device dev-a already has a bundle"):
        provision.add_device(root, "dev-a")
    assert tree(root) == before  # refused before writing anything

    out = provision.init(root, "other", ["127.0.0.1"], force=True)
    assert out.retired is not None and out.retired.parent == root / "retired"
    assert tree(out.retired) == before  # the whole old federation, byte for byte
    assert mode(out.retired / "ca" / "ca.key") == 0o600
    assert Layout(root).read_meta().federation == "other"
    assert load_cert(Layout(root).ca_cert) != load_cert(out.retired / "ca" / "ca.crt")


def test_replacing_a_device_revokes_its_old_identity(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    old = read_registry(layout.registry).active_key("dev-a")
    old_key = (layout.bundle("dev-a") / "signing.key").read_bytes()
    out = install(layout, "dev-a", force=True)
    registry = read_registry(layout.registry)
    new = registry.active_key("dev-a")
    assert old is not None and new is not None and new.key != old.key
    assert [(k.device, k.key, k.reason) for k in registry.revoked()] == [("dev-a", old.key, "replaced by a new bundle")]
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old.tls_serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.tls_serial) is None
    retired = next((layout.root / "retired").iterdir())
    assert (retired / "devices" / "dev-a" / "signing.key").read_bytes() == old_key  # kept, not deleted
    assert out == installed(layout, "dev-a")


def test_revoke_marks_the_key_removes_the_acl_block_and_lists_the_certificate(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a", "dev-b"])
    crl_before = x509.load_pem_x509_crl(layout.crl.read_bytes())
    entry = read_registry(layout.registry).active_key("dev-b")
    assert entry is not None

    provision.revoke(layout.root, "dev-b", reason="lost in the field")
    registry = read_registry(layout.registry)
    assert registry.active_key("dev-b") is None and registry.devices() == ["dev-a"]
    revoked = registry.find(entry.key_id)
    assert revoked is not None and not revoked.active and revoked.reason == "lost in the field"
    assert "user dev-b" not in layout.acl.read_text() and "dev-b" not in layout.acl.read_text()
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(entry.tls_serial) is not None
    assert crl.is_signature_valid(load_cert(layout.ca_cert).public_key())  # type: ignore[arg-type]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > crl_before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl.next_update_utc == load_cert(layout.ca_cert).not_valid_after_utc  # an expired CRL locks all out
    assert not layout.bundle("dev-b").exists()  # moved to retired/, so the id can be enrolled again
    assert any((p / "devices" / "dev-b" / "tls.key").exists() for p in (layout.root / "retired").iterdir())

    with pytest.raises(ProvisionError, match="device dev-b is already revoked"):
        provision.revoke(layout.root, "dev-b")
    with pytest.raises(ProvisionError, match="device dev-z is not enrolled here"):
        provision.revoke(layout.root, "dev-z")
    install(layout, "dev-b")  # enrolled again, with a new key; the revoked one stays revoked
    again = read_registry(layout.registry)
    assert again.active_key("dev-b") is not None and again.find(entry.key_id) == revoked


def test_bad_ids_and_paths_are_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    with pytest.raises(ProvisionError, match="federation"):
        provision.init(root, "home/+", ["127.0.0.1"])
    with pytest.raises(ProvisionError, match="--days 0"):
        provision.init(root, FEDERATION, ["127.0.0.1"], days=0)
    with pytest.raises(ProvisionError, match="--broker-dir"):
        provision.init(root, FEDERATION, ["127.0.0.1"], broker_dir="relative/dir")
    provision.init(root, FEDERATION, ["127.0.0.1"])
    with pytest.raises(ProvisionError, match="device id"):
        provision.add_device(root, "a/b")
    with pytest.raises(ProvisionError, match="the gateway's identity"):
        provision.add_device(root, provision.gateway_identity(FEDERATION))
    with pytest.raises(ProvisionError, match="--install-dir"):
        provision.add_device(root, "dev-a", install_dir="etc/tinyfed")
    with pytest.raises(ProvisionError, match=r"not found; is .* a directory made by `tinyfed provision init`"):
        provision.add_device(tmp_path / "nothing-here", "dev-a")


def test_the_gateways_registry_reloads_itself_and_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    watcher = RegistryWatcher(layout.registry)
    assert watcher.current().devices() == ["dev-a"] and watcher.reloads == 0
    install(layout, "dev-b")
    assert watcher.current().devices() == ["dev-a", "dev-b"] and watcher.reloads == 1
    assert watcher.current().devices() == ["dev-a", "dev-b"] and watcher.reloads == 1  # unchanged: not re-read
    provision.revoke(layout.root, "dev-a")
    assert watcher.current().devices() == ["dev-b"] and watcher.reloads == 2

    good = layout.registry.read_bytes()
    layout.registry.write_text('{"format": 1, "federation": "home", "keys": [{"device": "x"}]}')
    with caplog.at_level(logging.ERROR):
        assert watcher.current().devices() == ["dev-b"]
    assert "keeping the device registry read before" in caplog.text and "keys[0] key" in caplog.text
    layout.registry.write_bytes(good)
    assert watcher.current().devices() == ["dev-b"] and watcher.reloads == 3
    with pytest.raises(RegistryError, match=r"devices\.json: not JSON"):
        layout.registry.write_text("{")
        read_registry(layout.registry)


def test_a_revocation_written_while_the_watcher_first_reads_is_seen_at_the_next_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a fresh-eyes review found: the file replaced between the watcher's first read and its stat."""
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    real_read = registry_module.read_registry

    def read_then_revoke(path: Path) -> Any:
        before = real_read(path)
        monkeypatch.setattr(registry_module, "read_registry", real_read)
        provision.revoke(layout.root, "dev-a")  # lands after the read, before anything else the watcher does
        return before

    monkeypatch.setattr(registry_module, "read_registry", read_then_revoke)
    watcher = RegistryWatcher(layout.registry)
    assert watcher.current().devices() == []  # the revocation is in force at the first look


def test_a_signing_key_others_can_read_is_refused(tmp_path: Path) -> None:
    layout = provisioned(tmp_path / "pki", ["dev-a"])
    key = installed(layout, "dev-a") / "signing.key"
    load_signing_key(key)
    os.chmod(key, 0o644)
    with pytest.raises(KeyFileError, match=r"readable by others \(mode 0644\); chmod 600"):
        load_signing_key(key)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        os.chmod(installed(layout, "dev-a") / "tls.key", 0o600)
        load_signing_key(installed(layout, "dev-a") / "tls.key")  # the TLS key is P-256, not a signing key


def test_the_command_prints_paths_and_modes_never_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pki"
    assert main(["provision", "init", "--federation", FEDERATION, "--out", str(root), "--broker-host", "hub"]) == 0
    assert main(["provision", "device", "pi", "--dir", str(root), "--archive"]) == 0
    assert main(["provision", "revoke", "pi", "--dir", str(root), "--reason", "test"]) == 0
    assert main(["provision", "list", "--dir", str(root)]) == 0
    out, err = capsys.readouterr()
    assert f"0600  {root / 'ca' / 'ca.key'}" in out and f"0600  {root / 'devices' / 'pi' / 'signing.key'}" in out
    assert "REVOKED" in out and "(test)" in out
    secrets = [p.read_bytes() for p in root.rglob("*.key")]
    assert secrets and "PRIVATE KEY" not in out + err
    for secret in secrets:
        body = b"".join(secret.splitlines()[1:-1]).decode()
        assert body[:24] not in out + err
    assert main(["provision", "device", "pi", "--dir", str(root / "nope")]) == 2
    assert "federation.json: not found" in capsys.readouterr().err
    checksum = hashlib.sha256(b"".join(tree(root).values())).hexdigest()
    assert main(["provision", "init", "--federation", FEDERATION, "--out", str(root), "--broker-host", "hub"]) == 2
    assert "refusing to replace a CA" in capsys.readouterr().err
    assert hashlib.sha256(b"".join(tree(root).values())).hexdigest() == checksum


def test_several_devices_enrol_at_once_or_not_at_all(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    provision.init(root, FEDERATION, ["127.0.0.1"])
    provision.add_devices(root, ["a", "b", "c"], install_dir=f"{tmp_path}/on/{{id}}", storage="/var/lib/tf/{id}")
    layout = Layout(root)
    for device in ("a", "b", "c"):
        config = DeviceConfig.load(layout.bundle(device) / "device.toml", env={})
        assert config.broker.cert_file == f"{tmp_path}/on/{device}/tls.crt"
        assert config.device.storage == f"/var/lib/tf/{device}"
    assert read_registry(layout.registry).devices() == ["a", "b", "c"]
    assert layout.acl.read_text() == acl.render(FEDERATION, provision.gateway_identity(FEDERATION), ["a", "b", "c"])

    before = tree(root)
    with pytest.raises(ProvisionError, match="a device id is given twice"):
        provision.add_devices(root, ["d", "d"])
    with pytest.raises(ProvisionError, match="device c already has a bundle"):
        provision.add_devices(root, ["d", "c"])
    assert tree(root) == before  # "d" was not enrolled half-way


class _CountedKeys(tuple):  # type: ignore[type-arg]
    """A registry's keys, counting how many entries are read."""

    read = 0

    def __iter__(self) -> Iterator[Any]:
        for key in super().__iter__():
            type(self).read += 1
            yield key


def test_opening_a_message_reads_no_key_but_its_devices_however_many_are_enrolled(tmp_path: Path) -> None:
    """Every message the gateway opens asks the registry for its device's key, and a refused one for the key its
    envelope names (the sender's choice): both walked every key ever enrolled, 0.3 ms a message at 10,000 keys
    and 7.7 ms for each made-up key id; a reload of the file compared every device with every other."""
    made = wire.Ed25519Signer.generate()
    signer = wire.Ed25519Signer(made.private_key, key_id(public_raw(made.public_key())))  # as provisioning names it
    fleet = [registry_module.DeviceKey(f"dev-{i:05d}", os.urandom(32), i, "2026-11-30T00:00:00Z") for i in range(5000)]
    fleet.append(registry_module.DeviceKey("dev-last", public_raw(signer.public_key()), 5000, "2026-11-30T00:00:00Z"))
    path = tmp_path / "devices.json"
    registry_module.write_registry(path, registry_module.Registry(FEDERATION, tuple(fleet)))
    watcher = RegistryWatcher(path)
    read = watcher.current()
    watcher._registry = registry_module.Registry(read.federation, _CountedKeys(read.keys))  # what the gateway reads
    trust = GatewayTrust(wire.Ed25519Signer.generate(), watcher)
    presence = wire.encode(wire.Presence("dev-last", True, 1, 0))
    stranger = wire.Ed25519Signer.generate()
    trust.open("dev-last", wire.sign(presence, signer))  # the first look at this registry
    with pytest.raises(wire.ValueRejected, match="unknown key"):
        trust.open("dev-last", wire.sign(presence, stranger))
    with pytest.raises(wire.ValueRejected, match="not enrolled"):
        trust.open("dev-nobody", wire.sign(presence, stranger))
    _CountedKeys.read = 0
    for _ in range(50):
        assert wire.decode(trust.open("dev-last", wire.sign(presence, signer)).payload).device == "dev-last"
        with pytest.raises(wire.ValueRejected, match="unknown key"):
            trust.open("dev-last", wire.sign(presence, stranger))
        with pytest.raises(wire.ValueRejected, match="not enrolled"):
            trust.open("dev-nobody", wire.sign(presence, stranger))
    assert _CountedKeys.read == 0, _CountedKeys.read  # a walk would be 5,001 a message
    assert trust.out("dev-last") is None and trust.revoked() == {}


def test_the_round_threads_look_for_revoked_keys_reads_the_devices_only_when_the_registry_changed(
    tmp_path: Path,
) -> None:
    """The round thread asks at every step which devices lost their key: it built a set of every enrolled device
    each time (0.8 ms a step at 10,000), though the registry changes only when devices.json is rewritten."""
    calls = [0]

    class Counted(registry_module.Registry):
        def devices(self) -> list[str]:
            calls[0] += 1
            return super().devices()

    fleet = tuple(registry_module.DeviceKey(f"dev-{i:04d}", os.urandom(32), i, "2026-11-30T00:00:00Z")
                  for i in range(1000))  # fmt: skip
    path = tmp_path / "devices.json"
    registry_module.write_registry(path, registry_module.Registry(FEDERATION, fleet))
    watcher = RegistryWatcher(path)
    watcher._registry = Counted(FEDERATION, watcher.current().keys)
    trust = GatewayTrust(wire.Ed25519Signer.generate(), watcher)
    gone = {"dev-gone": "it has no key in the device registry (not enrolled)"}
    assert trust.revoked(["dev-0001", "dev-gone"]) == gone  # the first look: who was revoked while it was down
    calls[0] = 0
    assert all(trust.revoked() == {} for _ in range(100)) and calls[0] == 0, calls[0]
    revoked, _ = watcher.current().revoke("dev-0007", "2026-12-01T00:00:00Z", "lost")
    registry_module.write_registry(path, revoked)  # a new file: the next look reads it, and says who is out
    assert trust.revoked() == {"dev-0007": "its key was revoked (2026-12-01T00:00:00Z, lost)"}
    assert trust.revoked() == {}
