"""A device's model path: follow the retained manifest, fetch and verify chunks, install atomically.

A damaged chunk is refused on arrival and fetched again by re-subscribing
to its topic (the broker re-delivers the retained copy); the model in use
keeps serving until the new one is complete, hashes to its version and
loads in the device's interpreter. A version that does not install is
remembered with the reason (``failed``), so a task waiting for it can
say at once that its model will not come, instead of waiting out its deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .. import wire
from ..model_store import ModelStore, Validator
from .chunking import ChunkAssembler
from .mqtt import MqttLink
from .topics import Topics

log = logging.getLogger(__name__)


class ModelFetcher:
    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        store: ModelStore,
        validate: Validator | None = None,
        on_installed: Callable[[wire.ModelManifest], None] | None = None,
        on_refused: Callable[[wire.ModelManifest, Exception], None] | None = None,
    ) -> None:
        self.link = link
        self.topics = topics
        self.store = store
        self.validate = validate
        self.on_installed = on_installed
        self.on_refused = on_refused
        self.assembler: ChunkAssembler | None = None
        self.manifest: wire.ModelManifest | None = None  # of the installed model, once known
        self.announced: wire.ModelManifest | None = None  # the latest manifest the gateway published
        self.failed: dict[bytes, Exception] = {}  # version -> why it was not installed
        self.refused = 0
        self._refetching: set[str] = set()
        self.installed = threading.Event()
        self._lock = threading.Lock()
        link.subscribe(topics.manifest, self._on_manifest)

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        try:
            manifest = wire.decode(payload, expect=wire.ModelManifest)
        except wire.WireError as exc:
            log.warning("refused a manifest: %s", exc)
            return
        self.announced = manifest
        if manifest.version == self.store.current_version:
            self.manifest = manifest
            self.installed.set()
            return
        with self._lock:
            if self.assembler is not None and self.assembler.manifest.version == manifest.version:
                return
            self.assembler = ChunkAssembler(manifest)
        log.info(
            "model %s announced (%d bytes, %d chunks); fetching",
            manifest.version.hex()[:12],
            manifest.size,
            manifest.chunk_count,
        )
        self.link.subscribe(self.topics.chunks(manifest.version), self._on_chunk)

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        with self._lock:
            assembler = self.assembler
        if assembler is None:
            return
        try:
            complete = assembler.add(payload)
        except wire.WireError as exc:
            self.refused += 1
            index = topic.rsplit("/", 1)[-1]
            log.warning(
                "refused chunk %s of model %s: %s; fetching it again", index, assembler.manifest.version.hex()[:12], exc
            )
            self.refetch(topic)
            return
        if complete:
            self._install(assembler)

    def refetch(self, topic: str) -> None:
        """Re-subscribe to one chunk topic: the broker sends its retained copy again."""
        self.link.unsubscribe(topic)
        self._refetching.add(topic)
        self.link.subscribe(topic, self._on_chunk)

    def _install(self, assembler: ChunkAssembler) -> None:
        manifest = assembler.manifest
        try:
            model = assembler.result()
            self.store.install(model, manifest.version, self.validate)
        except Exception as exc:  # keep serving the current model whatever went wrong
            log.error(
                "model %s not installed: %s; still running %s",
                manifest.version.hex()[:12],
                exc,
                (self.store.current_version or b"").hex()[:12] or "nothing",
            )
            self.failed[manifest.version] = exc
            if self.on_refused is not None:
                self.on_refused(manifest, exc)
            return
        for topic in [self.topics.chunks(manifest.version), *self._refetching]:
            self.link.unsubscribe(topic)
        self._refetching.clear()
        with self._lock:
            self.assembler = None
        self.manifest = manifest
        self.installed.set()
        if self.on_installed is not None:
            self.on_installed(manifest)
