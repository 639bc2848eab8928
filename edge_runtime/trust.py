"""What a federation member signs with and whom it believes: the ``[trust]`` table, made into keys.

Two modes, one per federation (gateway and members must agree):

- ``signed`` (the default): the member signs every update, failure report and presence message (birth,
  death, and the last will, fixed at CONNECT) with its own Ed25519 key, and believes a manifest, task or
  receipt only when the gateway's key, pinned at provisioning, signed it. A member configured this way
  without both key files refuses to start (exit code 2), naming the keys and the way out.
- ``insecure``: nothing is signed and nothing is checked; a signed message is unwrapped unverified. It
  must be asked for (``mode = "insecure"``), and says so with a warning at every start. For the demo on
  the embedded broker and for tests of other things, never for real devices.

Key files are read with ``edge_runtime.keys`` (formats there); ``cryptography`` is imported only in
signed mode.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import wire
from .config import ConfigError, setting
from .keys import KeyFileError, key_id, load_public_key, load_signer, public_raw
from .transport.broker_config import BrokerConfig
from .wire.limits import Limits

log = logging.getLogger(__name__)
SIGNED = "signed"
INSECURE = "insecure"
MODES = (SIGNED, INSECURE)
M = TypeVar("M")
NEEDS_CRYPTOGRAPHY = "signatures need the cryptography package: pip install 'tinyfed[sign]'"

# The files of one provisioned identity, as `tinyfed provision device` writes its bundle (gateway/pki/bundle.py).
BUNDLE_CA = "ca.crt"
BUNDLE_TLS_CERT = "tls.crt"
BUNDLE_TLS_KEY = "tls.key"
BUNDLE_SIGNING_KEY = "signing.key"
BUNDLE_GATEWAY_KEY = "gateway.pub"


def check_mode(mode: str, where: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"{where}: {mode!r} is not {' or '.join(repr(m) for m in MODES)}")
    return mode


def warn_insecure(who: str, where: str) -> None:
    """Said at every start of an insecure member or gateway, so a log never hides it."""
    log.warning(
        "%s runs INSECURE (%s): it signs nothing and believes any model, task and receipt on the broker; "
        "for tests and the embedded-broker demo only (docs/security.md)", who, where,
    )  # fmt: skip


@dataclass(frozen=True)
class MemberTrust:
    """A member's signer and the gateway's pinned key; both None in insecure mode."""

    signer: wire.Signer | None = None
    gateway: wire.Verifier | None = None

    @property
    def signed(self) -> bool:
        return self.signer is not None

    @classmethod
    def insecure(cls) -> MemberTrust:
        return cls()

    @classmethod
    def from_files(cls, signing_key: str | Path, gateway_key: str | Path) -> MemberTrust:
        """Keys as provisioning writes them: ``signing.key`` (0600) and ``gateway.pub``. Raises KeyFileError."""
        pinned = load_public_key(gateway_key)
        return cls(load_signer(signing_key), wire.Ed25519Verifier({key_id(public_raw(pinned)): pinned}))

    def seal(self, message: bytes) -> bytes:
        """A message's bytes as sent: signed (COSE_Sign1) in signed mode, as they are otherwise."""
        return message if self.signer is None else wire.sign(message, self.signer)

    def decode(self, data: bytes, limits: Limits = wire.DEFAULT_LIMITS, *, expect: type[M]) -> M:
        """A message from the gateway, believed only when the pinned key signed it (signed mode).

        Raises a WireError naming what was wrong: ``envelope`` (not signed), ``envelope.unprotected.kid``
        (another key), ``envelope.signature`` (does not verify), or the message's own field.
        """
        message: M = wire.decode(data, limits, expect=expect, verifier=self.gateway,
                                 require_signature=self.gateway is not None)  # fmt: skip
        return message


def member_trust(section: Any, source: str, who: str, env: Mapping[str, str] | None = None) -> MemberTrust:
    """The trust a ``[trust]`` table (``mode``, ``signing_key``, ``gateway_key``) asks for, keys loaded.

    Signed without both keys is a configuration error naming the missing ones; a key file that is
    missing, unreadable, of the wrong kind or readable by others is one naming the file.
    """
    mode = check_mode(section.mode, setting(source, "trust", "mode", env))
    if mode == INSECURE:
        warn_insecure(who, f"{setting(source, 'trust', 'mode', env)} = \"insecure\"")
        return MemberTrust.insecure()
    missing = [name for name in ("signing_key", "gateway_key") if not getattr(section, name)]
    if missing:
        raise ConfigError(
            f"{source} [trust]: {' and '.join(missing)} not set. Signatures are on by default: {who} signs what "
            "it sends with its own key and believes only models, tasks and receipts the gateway's pinned key "
            "signed. `tinyfed provision device` writes both keys and a device.toml naming them (docs/security.md); "
            'to run without any of it (tests, a demo), set mode = "insecure" in [trust]'
        )
    try:
        return MemberTrust.from_files(section.signing_key, section.gateway_key)
    except KeyFileError as exc:
        raise ConfigError(f"{source} [trust]: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"{source} [trust] mode = \"signed\": {NEEDS_CRYPTOGRAPHY}") from exc


@dataclass(frozen=True)
class Bundle:
    """One provisioned identity's directory (a device's bundle): its TLS files and its signing keys.

    The serial bridge holds one per board it serves (``--bundles DIR``, ``DIR/<board id>/``): each board
    is its own client on the broker and signs with its own key, so boards never share an identity.
    """

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def check(self, who: str) -> None:
        """Every file is there, or a ConfigError naming the first missing one."""
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: no bundle for {who} (`tinyfed provision device {who}` makes it)")
        for name in (BUNDLE_CA, BUNDLE_TLS_CERT, BUNDLE_TLS_KEY, BUNDLE_SIGNING_KEY, BUNDLE_GATEWAY_KEY):
            if not self.path(name).is_file():
                raise ConfigError(f"{self.path(name)}: missing from the bundle of {who}")

    def broker(self, base: BrokerConfig) -> BrokerConfig:
        """``base`` with this identity's TLS files: its certificate names it on the broker."""
        return dataclasses.replace(base, ca_file=str(self.path(BUNDLE_CA)), cert_file=str(self.path(BUNDLE_TLS_CERT)),
                                   key_file=str(self.path(BUNDLE_TLS_KEY)))  # fmt: skip

    def trust(self, who: str) -> MemberTrust:
        self.check(who)
        try:
            return MemberTrust.from_files(self.path(BUNDLE_SIGNING_KEY), self.path(BUNDLE_GATEWAY_KEY))
        except KeyFileError as exc:
            raise ConfigError(f"the bundle of {who}: {exc}") from exc
        except ImportError as exc:
            raise ConfigError(f"the bundle of {who}: {NEEDS_CRYPTOGRAPHY}") from exc
