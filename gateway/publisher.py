"""Model versions: made from a round's aggregate, kept on disk, published on the broker, rolled back.

Each version is three files named by its sha256: the int8 ``.tflite`` the
devices run, the float master weights it was quantised from, and the
strategy's server state (momentum, moments), so a restarted gateway
continues exactly where it stopped. Making a version (strategy step,
export, hashing, fsyncs) is the heaviest thing the gateway does; it runs on
the round thread without the service's lock, and touches nothing MQTT
intake reads until ``adopt`` swaps the new version in.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import wire
from edge_runtime.storage import atomic_write
from edge_runtime.transport.chunking import make_manifest, publish_model
from edge_runtime.transport.mqtt import MqttLink
from edge_runtime.transport.topics import Topics

from .aggregate import StreamingAggregate
from .config import GatewayConfig
from .downlink import DownlinkPolicy, publishable
from .master import MasterModel
from .store import GatewayStore
from .strategies.base import RoundInput

log = logging.getLogger(__name__)
COMPOUND_REPORTERS = 3  # devices whose range reports a version needs before its bound compounds


@dataclass(frozen=True)
class VersionFiles:
    model: Path
    master: Path
    strategy: Path

    @classmethod
    def of(cls, models_dir: Path, version: bytes) -> VersionFiles:
        stem = models_dir / version.hex()
        return cls(stem.with_suffix(".tflite"), stem.with_suffix(".master.npz"), stem.with_suffix(".strategy.npz"))


@dataclass(frozen=True)
class NewVersion:
    """A version made from a round, written to disk but not yet current."""

    model: bytes
    version: bytes
    files: VersionFiles


class Publisher:
    def __init__(self, config: GatewayConfig, store: GatewayStore, strategy: Any) -> None:
        self.config = config
        self.store = store
        self.strategy = strategy
        self.models_dir = config.storage / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.master, self.model = self._load_or_init()
        self.version = hashlib.sha256(self.model).digest()
        self.manifest, self.chunks = self._manifest(self.model, None)
        self._patch_from_stored_parent()
        self._retained: list[tuple[bytes, int]] = []  # versions whose chunks are retained, with chunk counts
        self._strategy_before: dict[str, np.ndarray] = {}  # the server state a failed close returns to
        self._versions_since_ranges = 0  # versions made since activation ranges were last taken (range_growth)
        self._versions_before = 0  # the count before the version being made (reload returns to it)
        self.downlink = DownlinkPolicy(density=config.gateway.downlink_density,
                                       saturate=config.gateway.downlink_saturate)

    def range_growth(self, reporters: int) -> float:
        """How far this version's activation ranges may move the model's: ``max_range_growth`` for each
        version published since ranges were last taken, at most ``report_every`` of them, and only one when
        fewer than ``COMPOUND_REPORTERS`` devices reported (a median of one or two is theirs alone).

        Activations grow in every round, reported or not: bounded per report, HAR's logits (reported every
        ten rounds) needed (-40, 17) at round 11 and got (-9.5, 4.1), clipped for the rest of the run.
        Counted in versions, not round numbers, so late reports landing in later async buffers get one
        version's growth each, and the first report after a start (the count is not kept) gets one."""
        rounds = self.config.rounds
        span = min(self._versions_since_ranges, rounds.report_every) if reporters >= COMPOUND_REPORTERS else 1
        return math.exp(min(700.0, span * math.log(rounds.max_range_growth)))  # no overflow

    @property
    def ranges_due(self) -> bool:
        """Whether the next training round should ask for reports off the ``report_every`` schedule: the
        ranges the current version took moved some layer's by more than ``range_settle``, or its weights
        have grown (or shrunk) that much since ranges were last taken (``MasterModel.range_drift``).

        On a fixed schedule HAR's ranges went stale between reports and its accuracy fell from 0.78 to 0.44
        before the next. Reports while ranges move let them follow, at one ``max_range_growth`` per version.
        Read from the version's master file after a restart. A device that lies can only make a round ask
        for reports: the median moves the ranges, one report per layer per device (aggregate.py)."""
        settle = self.config.rounds.range_settle
        if settle == 0 or not self.takes_ranges:
            return False
        return max(self.master.ranges_moved, self.master.range_drift()) > settle

    @property
    def takes_ranges(self) -> bool:
        """Whether this federation's rounds take activation ranges at all: not under differential privacy
        (they would go into the model around the noise) nor secure aggregation (the gateway sees only a sum)."""
        return self.config.privacy.mode == "off" and not self.config.secagg.on

    @property
    def sizes(self) -> dict[int, int]:
        return self.master.sizes

    # -- loading ----------------------------------------------------------------------------------------
    def _load_or_init(self) -> tuple[MasterModel, bytes]:
        layers = self.config.gateway.trainable_layers
        current = self.store.current_version
        if current is not None:
            files = VersionFiles.of(self.models_dir, current)
            model = files.model.read_bytes()
            master = MasterModel(model, layers)
            self._load_state(master, files)
            log.info("resuming at model %s", current.hex()[:12])
            return master, model
        if not self.config.gateway.model:
            raise ValueError(f"{self.config.source} [gateway] model: no initial model given and the store has none")
        model = Path(self.config.gateway.model).read_bytes()
        master = MasterModel(model, layers)
        version = hashlib.sha256(model).digest()
        files = VersionFiles.of(self.models_dir, version)
        atomic_write(files.model, model)
        master.save(files.master)
        self.store.add_model(version, None, None, files.model, files.master, len(model))
        log.info("initial model %s (%d bytes)", version.hex()[:12], len(model))
        return master, model

    def _load_state(self, master: MasterModel, files: VersionFiles) -> None:
        master.load(files.master)
        if files.strategy.exists():
            with np.load(files.strategy, allow_pickle=False) as data:
                self.strategy.load_state({k: data[k] for k in data.files})

    def reload(self) -> None:
        """Forget a version that was made but not adopted: master weights and strategy state as they were."""
        self.master.load(VersionFiles.of(self.models_dir, self.version).master)
        self.strategy.load_state(self._strategy_before)
        self._versions_since_ranges = self._versions_before

    def _manifest(self, model: bytes, parent: bytes | None) -> tuple[wire.ModelManifest, list[wire.ModelChunk]]:
        gw = self.config.gateway
        return make_manifest(model, self.master.trainable, gw.chunk_size, parent, gw.federation)

    # -- a round's version ------------------------------------------------------------------------------
    def make_version(
        self, aggregate: StreamingAggregate, round_input: RoundInput | None = None, asked_for_ranges: bool = False
    ) -> NewVersion:
        """Strategy step, re-quantisation, files on disk. Moves the master and strategy state in memory;
        ``adopt`` makes the result current, ``reload`` takes it back. ``round_input``: what the strategy steps
        on instead of the aggregate's mean (a DP round's noised mean). ``asked_for_ranges``: the round's
        tasks asked for ranges; if none came (boards behind the bridge send none), the weights' drift is
        counted afresh from here, so such a fleet is not asked again every round."""
        self._strategy_before = {k: np.array(v, copy=True) for k, v in self.strategy.state().items()}
        self._versions_before = self._versions_since_ranges
        new_weights = self.strategy.step(self.master.weights(), round_input or aggregate.round_input())
        self.master.set_weights(new_weights)
        self._versions_since_ranges += 1
        ranges = aggregate.activation_ranges()
        self.master.set_activation_ranges(ranges, self.range_growth(aggregate.range_reporters()))
        if ranges:
            self._versions_since_ranges = 0
        elif asked_for_ranges:
            self.master.norms_at_ranges = self.master.weight_norms()
        if ranges or self.ranges_due:
            again = ": the next round to open asks for reports" if self.ranges_due else ""
            log.info("activation ranges from %d device(s) moved a layer's up to %.2fx, the weights up to %.2fx "
                     "since%s", aggregate.range_reporters(), self.master.ranges_moved, self.master.range_drift(),
                     again)  # fmt: skip
        model = self.master.export()
        if self.config.gateway.patches:  # hold scales still and bound what moves, so the patch stays small
            model = publishable(self.model, model, self.master, self.downlink)
        version = hashlib.sha256(model).digest()
        files = VersionFiles.of(self.models_dir, version)
        atomic_write(files.model, model)
        self.master.save(files.master)
        buf = io.BytesIO()
        np.savez(buf, **self.strategy.state())
        atomic_write(files.strategy, buf.getvalue())
        return NewVersion(model, version, files)

    def adopt(self, new: NewVersion) -> None:
        parent, before = self.version, self.model
        self.model, self.version = new.model, new.version
        self.manifest, self.chunks = self._manifest(new.model, parent)
        self._add_patch(before)

    def _add_patch(self, before: bytes) -> None:
        """Put the current version in the manifest as a patch against ``before`` (its parent), when it is worth it."""
        if not self.config.gateway.patches:
            return
        patch = wire.make_patch(before, self.model)
        # A patch as large as half the model would save little and cost the device a second path to fail on.
        if patch is None:
            log.info("version %s: layout changed, no patch", self.version.hex()[:12])
        elif patch.encoded_bytes < len(self.model) // 2:
            self.manifest = replace(self.manifest, parent=patch.base, patch=patch)
            log.info("version %s: %d bytes changed, a patch of %d bytes (the model is %d)",
                     self.version.hex()[:12], patch.count, patch.encoded_bytes, len(self.model))  # fmt: skip

    def _patch_from_stored_parent(self) -> None:
        """A restarted gateway publishes the patch from the current version's parent again, if its file is kept:
        devices that held the parent still need only the patch."""
        record = self.store.model(self.version.hex())
        parent = record.get("parent") if record else None
        path = VersionFiles.of(self.models_dir, bytes.fromhex(parent)).model if parent else None
        if path is not None and path.exists():
            self.manifest = replace(self.manifest, parent=bytes.fromhex(str(parent)))
            self._add_patch(path.read_bytes())

    # -- the broker -------------------------------------------------------------------------------------
    def publish(self, link: MqttLink, topics: Topics, seal: Callable[[bytes], bytes] = bytes) -> None:
        """Chunks, then the manifest (``seal``ed: signed in signed mode), retained; clear the retained chunks of
        versions older than the previous."""
        manifest, chunks = self.manifest, self.chunks
        publish_model(link, topics, manifest, chunks, seal=seal)
        if not self._retained or self._retained[-1][0] != manifest.version:
            self._retained.append((manifest.version, manifest.chunk_count))
        while len(self._retained) > 2:
            old, count = self._retained.pop(0)
            for i in range(count):
                link.publish(topics.chunk(old, i), b"", retain=True)  # an empty retained message clears it


def rollback(store: GatewayStore, prefix: str) -> dict[str, Any]:
    """Make an earlier version current (the gateway must be stopped); open rounds end as failed.

    Returns the version's record. Raises ``LookupError`` naming the known versions when ``prefix``
    matches none or several.
    """
    model = store.model(prefix)
    if model is None:
        known = ", ".join(m["version"][:12] for m in store.models())
        raise LookupError(f"no single version starts with {prefix!r}; known: {known}")
    for open_row in store.open_round_rows():
        store.end_round(open_row.round, "failed", note=f"rolled back to {model['version'][:12]}")
    store.set_meta("current_version", model["version"])
    store.set_meta("rolled_back_to", model["version"])  # [retention] never deletes it (gateway/retention.py)
    return model
