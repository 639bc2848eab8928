"""The gateway's side of signatures: it signs what it publishes and believes a device only under its own key.

In ``signed`` mode (the default, ``[trust]`` of gateway.toml):

- every manifest, task, receipt, state and gateway presence the gateway publishes is a COSE_Sign1 under
  its key (``signing_key``), which every device and the bridge pin;
- every update, failure report and presence (birth or death) is believed only when it is signed by the
  key the device registry (``devices``, ``gateway/pki/registry.py``, re-read when it changes) holds as
  valid for the device *whose topic it arrived on*: a message under another device's key, a revoked or
  unknown key, an unsigned one or one whose signature does not verify is refused, with the reason.

In ``insecure`` mode nothing is signed and nothing checked (signed messages are unwrapped unverified);
asking for it is required and logged as a warning at every start.

Refusals are ``wire.WireError``s naming the envelope's field at fault (``envelope`` when unsigned,
``envelope.unprotected.kid`` for a key that is not the device's valid one, ``envelope.signature``).
A message refused here is not the device's word: the service records the refusal without its id and
sends no receipt, or a forger could make a device drop a genuine update by forging one with its id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime import wire
from edge_runtime.config import ConfigError, setting
from edge_runtime.keys import KeyFileError, key_id, load_signer, public_raw
from edge_runtime.trust import INSECURE, NEEDS_CRYPTOGRAPHY, check_mode, warn_insecure
from edge_runtime.wire.errors import ValueRejected

log = logging.getLogger(__name__)


@dataclass
class TrustSection:
    """``[trust]`` of gateway.toml (docs/security.md); ``tinyfed provision init`` writes it."""

    mode: str = "signed"  # or "insecure"
    signing_key: str | None = None  # the gateway's Ed25519 key (gateway/signing.key of the provisioning directory)
    devices: str | None = None  # the device registry (gateway/devices.json), re-read whenever it changes
    # The identity a starting gateway reads the running one's presence with, on a broker that names each client
    # by its certificate (use_username_as_clientid): connecting with the gateway's own would cut the running one.
    probe_cert_file: str | None = None
    probe_key_file: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("signed", "insecure"):
            raise ValueError(f"mode {self.mode!r} is not 'signed' or 'insecure'")
        if (self.probe_cert_file is None) != (self.probe_key_file is None):
            raise ValueError("probe_cert_file and probe_key_file go together")


class DeviceKeys:
    """A ``wire.Verifier`` that takes only the key the registry holds as valid for one device."""

    def __init__(self, registry: Any, device: str) -> None:
        self.registry = registry
        self.device = device

    def verify(self, kid: bytes, alg: int, to_be_signed: bytes, signature: bytes) -> None:
        entry = self.registry.active_key(self.device)
        if entry is None or entry.key_id != kid:
            raise ValueRejected("envelope.unprotected.kid", self._why(kid, entry))
        wire.Ed25519Verifier({kid: entry.public_key()}).verify(kid, alg, to_be_signed, signature)

    def _why(self, kid: bytes, entry: Any) -> str:
        other = self.registry.find(kid)
        if other is not None and other.device != self.device:
            return f"key {kid.hex()} is device {other.device}'s, not {self.device}'s"
        if other is not None and not other.active:
            return f"key {kid.hex()} of {self.device} was revoked ({other.revoked}, {other.reason or 'no reason'})"
        if entry is None:
            revoked = self.registry.enrolled(self.device)  # not active, so every key it had is revoked
            return f"{self.device} has no valid key ({'revoked' if revoked else 'not enrolled'})"
        return f"unknown key {kid.hex()[:16]}; {self.device}'s is {entry.key_id.hex()}"


class GatewayTrust:
    """Signs outgoing messages and opens incoming ones; ``insecure()`` does neither."""

    def __init__(self, signer: wire.Ed25519Signer | None = None, registry: Any = None) -> None:
        self.signer = signer
        self.watcher = registry  # a RegistryWatcher (or anything with current()); None in insecure mode
        self._own: wire.Verifier | None = None
        if signer is not None:
            key = signer.public_key()
            self._own = wire.Ed25519Verifier({key_id(public_raw(key)): key})
        self._valid: set[str] | None = None  # devices with a valid key at the last look (revoked())
        self._looked_at: Any = None  # the registry (one read of the file) that look was at

    @property
    def signed(self) -> bool:
        return self.signer is not None

    @classmethod
    def insecure(cls) -> GatewayTrust:
        return cls()

    def seal(self, message: bytes) -> bytes:
        return message if self.signer is None else wire.sign(message, self.signer)

    def open(self, device: str, data: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS) -> wire.Opened:
        """The message ``device`` sent, once its signature is checked against that device's valid key."""
        if self.watcher is None:
            return wire.open_envelope(data, limits)
        keys = DeviceKeys(self.watcher.current(), device)
        return wire.open_envelope(data, limits, keys, require_signature=True)

    def own(self, data: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS) -> wire.Opened:
        """A message this gateway's own key signed (a gateway presence): so a starting gateway believes it."""
        return wire.open_envelope(data, limits, self._own, require_signature=self._own is not None)

    def revoked(self, known: Iterable[str] = ()) -> dict[str, str]:
        """Devices whose valid key is gone since the last call, each with why (the registry is re-read if it
        changed). The first call names those of ``known`` (the devices the store remembers) that have no valid
        key now: revoked while the gateway was down."""
        if self.watcher is None:
            return {}
        registry = self.watcher.current()
        if registry is self._looked_at:  # the same read of the file: nobody's key changed since the last look
            return {}  # (the round thread looks at every step: a set of every enrolled device each time was O(fleet))
        self._looked_at = registry
        valid = set(registry.devices())
        gone = (self._valid if self._valid is not None else set(known)) - valid
        self._valid = valid
        return {device: self._why_out(registry, device) for device in sorted(gone)}

    def out(self, device: str) -> str | None:
        """Why ``device`` has no valid key now (the registry re-read if it changed); None if it has one."""
        if self.watcher is None:
            return None
        registry = self.watcher.current()
        return None if registry.active_key(device) is not None else self._why_out(registry, device)

    @staticmethod
    def _why_out(registry: Any, device: str) -> str:
        revoked = [k for k in registry.keys if k.device == device and not k.active]
        if not revoked:
            return "it has no key in the device registry (not enrolled)"
        key = revoked[-1]
        return f"its key was revoked ({key.revoked}, {key.reason or 'no reason given'})"


def gateway_trust(section: TrustSection, source: str, env: Mapping[str, str] | None = None) -> GatewayTrust:
    """The trust ``[trust]`` asks for, keys and registry loaded; signed without them is a ConfigError."""
    mode = check_mode(section.mode, setting(source, "trust", "mode", env))
    if mode == INSECURE:
        warn_insecure("the gateway", f"{setting(source, 'trust', 'mode', env)} = \"insecure\"")
        return GatewayTrust.insecure()
    missing = [name for name in ("signing_key", "devices") if not getattr(section, name)]
    if missing:
        raise ConfigError(
            f"{source} [trust]: {' and '.join(missing)} not set. Signatures are on by default: the gateway signs "
            "every model, task and receipt, and believes a device only under the key the device registry holds "
            "for it. `tinyfed provision init` writes both (paste its gateway/broker.toml into gateway.toml; "
            'docs/security.md); to run without any of it (tests, a demo), set mode = "insecure" in [trust]'
        )
    from .pki.registry import RegistryError, RegistryWatcher

    try:
        signer = load_signer(str(section.signing_key))
    except KeyFileError as exc:
        raise ConfigError(f"{setting(source, 'trust', 'signing_key', env)}: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"{source} [trust] mode = \"signed\": {NEEDS_CRYPTOGRAPHY}") from exc
    try:
        watcher = RegistryWatcher(Path(str(section.devices)))
    except RegistryError as exc:
        raise ConfigError(f"{setting(source, 'trust', 'devices', env)}: {exc}") from exc
    registry = watcher.current()
    log.info("signatures on: gateway key %s, %d enrolled device(s) in %s", signer.key_id.hex(),
             len(registry.devices()), section.devices)  # fmt: skip
    return GatewayTrust(signer, watcher)
