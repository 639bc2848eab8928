"""What ``tinyfed provision init|device|revoke|list`` do, as functions of the provisioning directory.

The device registry (``gateway/devices.json``) is the one record of who is enrolled; the broker's
ACL and CRL are made from it (:func:`sync_broker`) every time it changes. The order of the writes is
chosen so that a crash in between never leaves a valid identity that is not on record: enrolment
writes the registry before the bundle, revocation the CRL before the registry, and the next command
makes ACL and CRL again from the registry. Key material is written once (``files.write_new``);
``--force`` moves what it replaces to ``retired/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge_runtime.keys import public_raw
from edge_runtime.transport.broker import TlsListener
from edge_runtime.transport.topics import check_id
from edge_runtime.wire.errors import SchemaError

from . import acl, bundle
from .certs import TLS_KEYS, Authority, cert_pem, crl_pem, new_tls_key, private_pem, public_pem
from .files import PRIVATE, PUBLIC, ProvisionError, private_dir, replace_file, retire, write_new
from .layout import FederationMeta, Layout
from .registry import DeviceKey, Registry, read_registry, write_registry

DEFAULT_PORT = 8883
DEFAULT_BROKER_DIR = "/etc/mosquitto/tinyfed"
DEFAULT_INSTALL_DIR = "/etc/tinyfed"
DEFAULT_STORAGE = "/var/lib/tinyfed"
CA_DAYS = 20 * 365
LEAF_DAYS = 10 * 365


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gateway_identity(federation: str) -> str:
    """The gateway certificate's common name, its MQTT username and client id: the client id the gateway
    already connects with (``gateway/service.py``), so ``use_username_as_clientid`` leaves it unchanged."""
    return f"tinyfed-gateway-{federation}"


def _id(kind: str, value: str) -> str:
    try:
        return check_id(kind, value)
    except SchemaError as exc:
        raise ProvisionError(str(exc)) from exc


def _absolute(option: str, value: str) -> PurePosixPath:
    path = PurePosixPath(value)
    if not path.is_absolute() or any(c in value for c in "\n\r\t"):
        raise ProvisionError(f"{option} {value!r}: expected an absolute path (where the files will be)")
    return path


@dataclass
class Written:
    """What a command wrote, moved and what the operator does next: the command prints it, keys never."""

    files: list[Path] = field(default_factory=list)
    retired: Path | None = None
    notes: list[str] = field(default_factory=list)

    def new(self, path: Path, data: bytes, mode: int) -> Path:
        self.files.append(write_new(path, data, mode))
        return path

    def replaced(self, path: Path, data: bytes, mode: int) -> Path:
        self.files.append(replace_file(path, data, mode))
        return path


def tls_listener(layout: Layout) -> TlsListener:
    """The broker's TLS listener on the files in ``DIR/broker`` itself: what tests and the demo start."""
    return TlsListener(layout.broker_ca, layout.server_cert, layout.server_key, layout.acl, layout.crl)


def _installed_listener(meta: FederationMeta, layout: Layout) -> TlsListener:
    """The same listener on the paths where the hub's Mosquitto reads the files (``--broker-dir``)."""
    there = Path(meta.broker_dir)
    return TlsListener(*(there / p.name for p in (layout.broker_ca, layout.server_cert, layout.server_key,
                                                  layout.acl, layout.crl)))  # fmt: skip


def _mosquitto_conf(meta: FederationMeta, layout: Layout) -> bytes:
    return (
        f"# Mosquitto 2.0 configuration for tinyfed federation {meta.federation}, by `tinyfed provision init`.\n"
        f"# Goes to /etc/mosquitto/conf.d/; the files it names (ca.crt, server.crt, server.key, acl, crl.pem in\n"
        f"# {layout.broker_dir}/) are copied to {meta.broker_dir}/\n"
        "# (owned by the broker's user, keys 0600). After `tinyfed provision device|revoke`, copy acl and crl.pem\n"
        "# again and reload Mosquitto (SIGHUP): it re-reads both without dropping anyone. docs/security.md.\n"
        + _installed_listener(meta, layout).mosquitto_config(meta.port)
    ).encode()


def _gateway_toml(meta: FederationMeta, layout: Layout) -> bytes:
    g = layout.gateway_dir
    return (
        f"# The [broker] and [trust] tables of gateway.toml for federation {meta.federation}: written by `tinyfed "
        "provision init`.\n"
        f"# The gateway reads its files in place, here, so a revocation needs no copy on the gateway's side.\n"
        "[broker]\n"
        f"url = {bundle.toml_string(meta.broker_url)}\n"
        f"ca_file = {bundle.toml_string(str(g / 'ca.crt'))}\n"
        f"cert_file = {bundle.toml_string(str(g / 'tls.crt'))}  # common name {meta.gateway_identity}\n"
        f"key_file = {bundle.toml_string(str(g / 'tls.key'))}\n"
        'protocol = "5"\n'
        "\n[trust]\n"
        'mode = "signed"\n'
        f"signing_key = {bundle.toml_string(str(g / 'signing.key'))}  # signs every model, task, receipt and state\n"
        f"devices = {bundle.toml_string(str(layout.registry))}  # the device keys: re-read whenever it changes\n"
        f"probe_cert_file = {bundle.toml_string(str(g / 'probe.crt'))}  # common name "
        f"{acl.probe_identity(meta.gateway_identity)}: looks for a running gateway\n"
        f"probe_key_file = {bundle.toml_string(str(g / 'probe.key'))}\n"
    ).encode()


def _authority(layout: Layout) -> Authority:
    try:
        return Authority.load(layout.ca_key.read_bytes(), layout.ca_cert.read_bytes())
    except OSError as exc:
        raise ProvisionError(f"{layout.ca_key}: cannot read the CA ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ProvisionError(f"{layout.ca_key}: {exc}") from exc


def sync_broker(layout: Layout, meta: FederationMeta, registry: Registry, now: datetime, out: Written) -> None:
    """ACL and CRL from the registry: the enrolled devices get their topics, revoked certificates are refused."""
    out.replaced(layout.acl, acl.render(meta.federation, meta.gateway_identity, registry.devices()).encode(), PUBLIC)
    revoked = [(k.tls_serial, datetime.fromisoformat(k.revoked or iso(now))) for k in registry.revoked()]
    meta.crl_number += 1
    out.replaced(layout.crl, crl_pem(_authority(layout).crl(revoked, meta.crl_number, now)), PUBLIC)
    layout.write_meta(meta)


def init(
    root: Path,
    federation: str,
    broker_hosts: list[str],
    *,
    port: int = DEFAULT_PORT,
    broker_dir: str = DEFAULT_BROKER_DIR,
    tls_key: str = "p256",
    days: int = CA_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> Written:
    """A new federation: CA, broker certificate and configuration, the gateway's certificate and signing key."""
    now, root = now or utcnow(), root.absolute()  # absolute: the gateway's broker.toml names files in it
    _id("federation", federation)
    if not broker_hosts:
        raise ProvisionError("--broker-host: give the host name or address devices reach the broker at")
    if not 0 < port < 65536:
        raise ProvisionError(f"--port {port}: not a TCP port")
    if days < 1:
        raise ProvisionError(f"--days {days}: certificates must be valid for at least a day")
    if tls_key not in TLS_KEYS:
        raise ProvisionError(f"--tls-key {tls_key!r}: expected one of {', '.join(TLS_KEYS)}")
    _absolute("--broker-dir", broker_dir)
    layout = Layout(root)
    out = Written()
    existing = sorted(p for p in root.iterdir() if p.name != "retired") if root.is_dir() else []
    if existing:
        if not force:
            what = f"federation {layout.read_meta().federation}" if layout.meta_path.exists() else "files"
            raise ProvisionError(f"{root} already holds {what}: refusing to replace a CA (--force moves it all "
                                 f"to {root / 'retired'}/)")  # fmt: skip
        out.retired = retire(root, existing, now)
    for d in (root, layout.ca_dir, layout.broker_dir, layout.gateway_dir, layout.devices_dir):
        private_dir(d)
    meta = FederationMeta(
        federation, list(broker_hosts), port, broker_dir, gateway_identity(federation), tls_key, iso(now), crl_number=0
    )

    ca = Authority.create(federation, tls_key, now, days)
    out.new(layout.ca_key, private_pem(ca.key), PRIVATE)
    out.new(layout.ca_cert, cert_pem(ca.cert), PUBLIC)

    server_key = new_tls_key(tls_key)
    out.new(layout.server_key, private_pem(server_key), PRIVATE)
    out.new(layout.server_cert, cert_pem(ca.issue(broker_hosts[0], server_key, now, days, broker_hosts)), PUBLIC)
    out.new(layout.broker_ca, cert_pem(ca.cert), PUBLIC)

    gateway_key = new_tls_key(tls_key)
    g = layout.gateway_dir
    out.new(g / "tls.key", private_pem(gateway_key), PRIVATE)
    out.new(g / "tls.crt", cert_pem(ca.issue(meta.gateway_identity, gateway_key, now, days)), PUBLIC)
    out.new(g / "ca.crt", cert_pem(ca.cert), PUBLIC)
    # A second identity for the look a starting gateway takes for a running one (acl.py says why).
    probe_key = new_tls_key(tls_key)
    out.new(g / "probe.key", private_pem(probe_key), PRIVATE)
    probe_name = acl.probe_identity(meta.gateway_identity)
    out.new(g / "probe.crt", cert_pem(ca.issue(probe_name, probe_key, now, days)), PUBLIC)
    signing = ed25519.Ed25519PrivateKey.generate()
    out.new(g / "signing.key", private_pem(signing), PRIVATE)
    out.new(g / "signing.pub", public_pem(signing.public_key()), PUBLIC)

    registry = Registry(federation)
    write_registry(layout.registry, registry)
    out.files.append(layout.registry)
    layout.write_meta(meta)  # before sync_broker, which reads the CA and numbers the CRL in it
    sync_broker(layout, meta, registry, now, out)
    out.new(layout.mosquitto_conf, _mosquitto_conf(meta, layout), PUBLIC)
    out.new(layout.gateway_broker_toml, _gateway_toml(meta, layout), PUBLIC)
    out.files.append(layout.meta_path)
    out.notes.append(f"broker: copy ca.crt, server.crt, server.key, acl and crl.pem from {layout.broker_dir}/ to "
                     f"{broker_dir}/, and {layout.mosquitto_conf.name} to Mosquitto's conf.d/ as tinyfed.conf "
                     "(/etc/mosquitto/conf.d/ on Debian; docs/security.md)")  # fmt: skip
    out.notes.append(f"gateway: paste {layout.gateway_broker_toml} (its [broker] and [trust]) into gateway.toml")
    out.notes.append(f"devices: tinyfed provision device ID --dir {root}")
    return out


def _per_device(option: str, template: str, device: str) -> str:
    """``--install-dir`` and ``--storage`` may hold ``{id}``: several devices' bundles on one machine (a demo)."""
    value = template.replace("{id}", device)
    _absolute(option, value)
    return value


def add_devices(
    root: Path,
    devices: list[str],
    *,
    install_dir: str = DEFAULT_INSTALL_DIR,
    storage: str = DEFAULT_STORAGE,
    make_archive: bool = False,
    force: bool = False,
    days: int = LEAF_DAYS,
    now: datetime | None = None,
) -> Written:
    """Enrol ``devices``: a bundle each, their keys in the registry, their topics in the ACL (written once)."""
    now, root = now or utcnow(), root.absolute()
    layout = Layout(root)
    meta = layout.read_meta()
    if days < 1:
        raise ProvisionError(f"--days {days}: certificates must be valid for at least a day")
    if len(set(devices)) != len(devices):
        raise ProvisionError(f"a device id is given twice: {' '.join(devices)}")
    registry = read_registry(layout.registry)
    out = Written()
    old: list[Path] = []
    for device in devices:  # every check before anything is written
        _id("device id", device)
        if device in (meta.gateway_identity, acl.probe_identity(meta.gateway_identity)):
            raise ProvisionError(f"device id {device!r} is the gateway's identity; choose another")
        _per_device("--install-dir", install_dir, device)
        _per_device("--storage", storage, device)
        held = [p for p in (layout.bundle(device), layout.archive(device)) if p.exists()]
        current = registry.active_key(device)
        if not force and (held or current is not None):
            what = f"a bundle, {held[0]}" if held else f"a valid key, id {current.key_id.hex()}" if current else ""
            raise ProvisionError(f"device {device} already has {what}: refusing to replace it "
                                 "(--force revokes its old identity and moves its files to retired/)")  # fmt: skip
        old += held
        if current is not None:
            registry, _ = registry.revoke(device, iso(now), "replaced by a new bundle")
            out.notes.append(f"the previous identity of {device} (key id {current.key_id.hex()}) is revoked")
    if old:
        out.retired = retire(root, old, now)

    ca = _authority(layout)
    gateway_pub = (layout.gateway_dir / "signing.pub").read_bytes()
    made = []
    for device in devices:
        tls_key = new_tls_key(meta.tls_key)
        cert = ca.issue(device, tls_key, now, days)
        signing = ed25519.Ed25519PrivateKey.generate()
        entry = DeviceKey(device, public_raw(signing.public_key()), cert.serial_number, iso(now))
        registry = registry.add(entry)
        made.append((device, tls_key, cert, signing, entry))
    # The registry first: from here on every certificate's serial is on record, so whatever happens next
    # (a full disk, a crash), `--force` can revoke these identities and none of them stays valid unknown.
    write_registry(layout.registry, registry)
    out.files.append(layout.registry)

    for device, tls_key, cert, signing, entry in made:
        here = private_dir(layout.bundle(device))
        target = PurePosixPath(_per_device("--install-dir", install_dir, device))
        config = bundle.DeviceToml(
            device, meta.federation, meta.broker_url, target, _per_device("--storage", storage, device)
        )
        contents: dict[str, bytes] = {
            bundle.CA: cert_pem(ca.cert),
            bundle.TLS_CERT: cert_pem(cert),
            bundle.TLS_KEY: private_pem(tls_key),
            bundle.SIGNING_KEY: private_pem(signing),
            bundle.GATEWAY_KEY: gateway_pub,
            bundle.CONFIG: config.render().encode(),
        }
        for name, mode in bundle.FILES.items():
            out.new(here / name, contents[name], mode)
        if make_archive:
            out.new(layout.archive(device), bundle.archive(here), PRIVATE)
        out.notes.append(f"{device}: key id {entry.key_id.hex()}, certificate serial {entry.tls_serial:x}")
        out.notes.append(f"{device}: on the device, install -d -m 0700 {target} and copy {here}/* there (keys 0600)")
    sync_broker(layout, meta, registry, now, out)
    out.notes.append(f"broker: copy {layout.acl.name} and {layout.crl.name} to {meta.broker_dir}/ and reload "
                     "Mosquitto (SIGHUP)")  # fmt: skip
    return out


def add_device(root: Path, device: str, **options: Any) -> Written:
    """Enrol one device (:func:`add_devices`' options)."""
    return add_devices(root, [device], **options)


def revoke(root: Path, device: str, *, reason: str = "revoked by the operator", now: datetime | None = None) -> Written:
    """Revoke ``device``: out of the ACL, its certificate in the CRL, its key marked revoked for the gateway.

    The broker's files first, the registry last: after a crash in between, the device is still listed
    as valid, so running the command again finishes the job.
    """
    now, root = now or utcnow(), root.absolute()
    layout = Layout(root)
    meta = layout.read_meta()
    registry, entry = read_registry(layout.registry).revoke(device, iso(now), reason)
    out = Written()
    sync_broker(layout, meta, registry, now, out)
    write_registry(layout.registry, registry)
    out.files.append(layout.registry)
    old = [p for p in (layout.bundle(device), layout.archive(device)) if p.exists()]
    if old:
        out.retired = retire(root, old, now)
    out.notes.append(f"key id {entry.key_id.hex()} and certificate serial {entry.tls_serial:x} revoked")
    out.notes.append(f"broker: copy {layout.acl.name} and {layout.crl.name} to {meta.broker_dir}/ and reload "
                     "Mosquitto (SIGHUP): new connections are refused at TLS, an open one may no longer publish "
                     "or receive")  # fmt: skip
    out.notes.append(f"gateway: it re-reads {layout.registry} by itself")
    return out


def listing(root: Path) -> tuple[FederationMeta, Registry]:
    layout = Layout(root)
    return layout.read_meta(), read_registry(layout.registry)
