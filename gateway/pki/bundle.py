"""A device's bundle: the files one device needs, its ``device.toml``, and the bundle as one archive.

The bundle is made on the hub and copied to the device's install directory (``--install-dir``,
``/etc/tinyfed`` by default); the paths in its ``device.toml`` are where the files will be there, so
the file loads as is with ``DeviceConfig`` once copied (``edge_runtime/device_config.py`` has every key).
The archive holds the files at its top level with their modes (keys 0600), owned by uid 0:
``tar -xzf ID.tar.gz -C /etc/tinyfed`` as root puts them in place.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_runtime import trust

from .files import PRIVATE, PUBLIC

# The names a bridge and a device read them by (edge_runtime.trust.Bundle), written here.
CA = trust.BUNDLE_CA
TLS_CERT = trust.BUNDLE_TLS_CERT
TLS_KEY = trust.BUNDLE_TLS_KEY
SIGNING_KEY = trust.BUNDLE_SIGNING_KEY
GATEWAY_KEY = trust.BUNDLE_GATEWAY_KEY
CONFIG = "device.toml"
# name -> mode, in the order they are written and archived
FILES = {CA: PUBLIC, TLS_CERT: PUBLIC, TLS_KEY: PRIVATE, SIGNING_KEY: PRIVATE, GATEWAY_KEY: PUBLIC, CONFIG: PUBLIC}


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; non-ASCII is written as is, TOML has no surrogates)."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class DeviceToml:
    device: str
    federation: str
    broker_url: str
    install_dir: PurePosixPath
    storage: str

    def path(self, name: str) -> str:
        return str(self.install_dir / name)

    def render(self) -> str:
        return (
            f"# tinyfed device {self.device} of federation {self.federation}: written by `tinyfed provision device`.\n"
            f"# The key files are expected in {self.install_dir} (0700, keys 0600); see docs/security.md.\n"
            "\n[device]\n"
            f"id = {toml_string(self.device)}\n"
            f"federation = {toml_string(self.federation)}\n"
            f"storage = {toml_string(self.storage)}\n"
            "\n# [data]: this device's own data, for example\n"
            '# source = "/var/lib/tinyfed/local.npz"\n'
            "\n[broker]\n"
            f"url = {toml_string(self.broker_url)}\n"
            f"ca_file = {toml_string(self.path(CA))}\n"
            f"cert_file = {toml_string(self.path(TLS_CERT))}  # its common name is this device's MQTT username\n"
            f"key_file = {toml_string(self.path(TLS_KEY))}\n"
            'protocol = "5"\n'
            "\n[trust]\n"
            'mode = "signed"  # every update and presence signed; models, tasks, receipts believed only when signed\n'
            f"signing_key = {toml_string(self.path(SIGNING_KEY))}  # signs this device's updates and presence\n"
            f"gateway_key = {toml_string(self.path(GATEWAY_KEY))}  # the gateway's key, pinned: verifies models\n"
        )


def archive(bundle: Path) -> bytes:
    """The bundle's files as a .tar.gz (bytes; the caller writes it 0600: it holds keys)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in FILES.items():
            data = (bundle / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int((bundle / name).stat().st_mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
