"""A device's model path: follow the retained manifest, fetch and verify chunks, install atomically.

A damaged chunk is refused on arrival and fetched again by re-subscribing
to its topic (the broker re-delivers the retained copy); the model in use
keeps serving until the new one is complete, hashes to its version and
loads in the device's interpreter. A version that does not install is
remembered with the reason (``failed``), so a task waiting for it can
say at once that its model will not come, instead of waiting out its deadline.

The manifest is the model's root of trust: it carries the model's sha256
(its version) and each chunk is checked against it, so only the manifest
needs the gateway's signature. ``open_manifest`` verifies it (the member's
``MemberTrust.decode``) before anything else is looked at; one that does
not verify is ignored, the model in use stays, and the reason is logged
once per distinct message (a retained manifest comes again at every
reconnect). A manifest whose model is larger than ``capacity`` allows is
refused before any chunk is fetched.

A manifest may carry its version as a patch against its parent
(wire/patch.py): a device holding the parent applies it, and installs
the result only if it hashes to the version and loads, with no chunk
topic subscribed. A device holding anything else, or whose patch fails,
fetches the chunks as before.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

from .. import wire
from ..errors import TinyfedError
from ..model_store import ModelStore, Validator
from .chunking import ChunkAssembler
from .mqtt import MqttLink
from .topics import Topics

log = logging.getLogger(__name__)
SEEN_LIMIT = 64  # refused manifests remembered, so each is logged once
# A chunk refused again when fetched again is the broker's retained copy (a forgery, or damage at rest): each
# further fetch of it waits twice as long as the last, up to this, instead of asking the broker in a tight loop.
REFETCH_CAP = 60.0


class ModelTooLarge(ValueError, TinyfedError):
    """A manifest announces a model larger than the member takes: not fetched. Its tasks fail as no_memory."""

    reason = "no_memory"


class ModelFetcher:
    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        store: ModelStore,
        validate: Validator | None = None,
        on_installed: Callable[[wire.ModelManifest], None] | None = None,
        on_refused: Callable[[wire.ModelManifest, Exception], None] | None = None,
        open_manifest: Callable[[bytes], wire.ModelManifest] | None = None,
        capacity: Callable[[], tuple[int, str] | None] | None = None,
    ) -> None:
        self.link = link
        self.topics = topics
        self.store = store
        self.validate = validate
        self.on_installed = on_installed
        self.on_refused = on_refused
        self.open_manifest = open_manifest or (lambda payload: wire.decode(payload, expect=wire.ModelManifest))
        self.capacity = capacity
        self.refused_manifests = 0  # manifests that did not decode or verify (each delivery counted)
        self._said: dict[bytes, None] = {}  # digests of refused manifests already logged
        self.assembler: ChunkAssembler | None = None
        self.manifest: wire.ModelManifest | None = None  # of the installed model, once known
        self.announced: wire.ModelManifest | None = None  # the latest manifest the gateway published
        self.failed: dict[bytes, Exception] = {}  # version -> why it was not installed
        self.refused = 0
        self.patched = 0  # versions installed from a patch
        self.patch_failures = 0  # patches that did not apply or verify (the whole model was fetched instead)
        self.fetched = 0  # versions installed from chunks
        self._refetching: set[str] = set()
        self._refetches: dict[str, int] = {}  # chunk topic -> times fetched again for the current model
        self.installed = threading.Event()
        self._lock = threading.Lock()
        link.subscribe(topics.manifest, self._on_manifest)

    def _once(self, payload: bytes) -> bool:
        """True the first time this exact message is refused: a retained one comes back at every reconnect."""
        digest = hashlib.sha256(payload).digest()
        if digest in self._said:
            return False
        self._said[digest] = None
        while len(self._said) > SEEN_LIMIT:
            del self._said[next(iter(self._said))]
        return True

    def _on_manifest(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained manifest
        try:
            manifest = self.open_manifest(payload)
        except wire.WireError as exc:
            self.refused_manifests += 1
            if self._once(payload):
                log.warning("refused a manifest of %d bytes: %s; still running %s", len(payload), exc,
                            (self.store.current_version or b"").hex()[:12] or "no model")  # fmt: skip
            return
        self.announced = manifest
        if manifest.version == self.store.current_version:
            self.manifest = manifest
            self.installed.set()
            return
        limit = self.capacity() if self.capacity is not None else None
        if limit is not None and manifest.size > limit[0]:
            too_large = ModelTooLarge(f"model {manifest.version.hex()[:12]} is {manifest.size} bytes; this member "
                                      f"takes at most {limit[0]} ({limit[1]})")  # fmt: skip
            if manifest.version not in self.failed:
                log.error("%s: not fetched", too_large)
            self.failed[manifest.version] = too_large
            if self.on_refused is not None:
                self.on_refused(manifest, too_large)
            return
        if manifest.patch is not None and manifest.patch.base == self.store.current_version and self._patch(manifest):
            return
        with self._lock:
            if self.assembler is not None and self.assembler.manifest.version == manifest.version:
                return
            self.assembler = ChunkAssembler(manifest)
            self._refetches.clear()
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
        """Re-subscribe to one chunk topic: the broker sends its retained copy again; at once the first time,
        then after a doubling pause (a copy refused twice is the broker's own)."""
        count = self._refetches.get(topic, 0)
        self._refetches[topic] = count + 1
        self.link.unsubscribe(topic)
        self._refetching.add(topic)
        if count == 0:
            self.link.subscribe(topic, self._on_chunk)
            return
        timer = threading.Timer(min(REFETCH_CAP, 0.5 * 2**count), self._resubscribe, args=(topic,))
        timer.daemon = True
        timer.start()

    def _resubscribe(self, topic: str) -> None:
        if topic in self._refetching:
            self.link.subscribe(topic, self._on_chunk)

    def _patch(self, manifest: wire.ModelManifest) -> bool:
        """Install the manifest's version by patching the model held; False (logged) when the patch does not
        apply, its result does not verify or load: the caller then fetches the whole model."""
        assert manifest.patch is not None
        try:
            held = self.store.current()
            if held is None:
                raise wire.ValueRejected("model", "the model held is missing or damaged")
            model = wire.apply_patch(held, manifest.patch)
            self.store.install(model, manifest.version, self.validate)
        except Exception as exc:  # whatever went wrong, the whole model is the way out
            self.patch_failures += 1
            log.warning("model %s: patch of %d bytes not applied (%s); fetching the whole model",
                        manifest.version.hex()[:12], manifest.patch.encoded_bytes, exc)  # fmt: skip
            return False
        self.patched += 1
        log.info("model %s installed from a patch of %d bytes (%d changed)", manifest.version.hex()[:12],
                 manifest.patch.encoded_bytes, manifest.patch.count)  # fmt: skip
        with self._lock:
            self.assembler = None
        self._installed(manifest)
        return True

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
        self._refetches.clear()
        with self._lock:
            self.assembler = None
        self.fetched += 1
        self._installed(manifest)

    def _installed(self, manifest: wire.ModelManifest) -> None:
        self.manifest = manifest
        self.installed.set()
        if self.on_installed is not None:
            self.on_installed(manifest)
