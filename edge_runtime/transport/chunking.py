"""Models travel as retained chunks plus a retained manifest; devices reassemble and verify.

Each chunk carries its own sha256, so one damaged in transit is refused on
arrival (and fetched again) instead of failing the whole-file hash at the
end; the whole file must still hash to the manifest's version before use.
The manifest lists every chunk's sha256 too, and it is the one message the
gateway signs (``seal``): a chunk that is not the gateway's is refused on
arrival like a damaged one, whoever made its own digest agree with it. A
model of one chunk lists none: that chunk's sha256 is the version, which the
manifest carries anyway, and every device receives the manifest each round
(35 bytes of a digits round's 500).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from .. import wire
from ..wire.errors import ValueRejected
from .mqtt import MqttLink
from .topics import Topics

log = logging.getLogger(__name__)
DEFAULT_CHUNK = 64 * 1024


def make_manifest(
    model: bytes,
    trainable: list[wire.TrainableTensor],
    chunk_size: int = DEFAULT_CHUNK,
    parent: bytes | None = None,
    federation: str = "",
) -> tuple[wire.ModelManifest, list[wire.ModelChunk]]:
    version = hashlib.sha256(model).digest()
    chunks = [
        wire.ModelChunk(
            version, i, model[off : off + chunk_size], hashlib.sha256(model[off : off + chunk_size]).digest()
        )
        for i, off in enumerate(range(0, len(model), chunk_size))
    ]
    manifest = wire.ModelManifest(
        version, len(model), chunk_size, len(chunks), trainable, int(time.time()), parent, federation,
        [chunk.digest for chunk in chunks] if len(chunks) > 1 else [],
    )  # fmt: skip
    return manifest, chunks


def publish_model(
    link: MqttLink,
    topics: Topics,
    manifest: wire.ModelManifest,
    chunks: list[wire.ModelChunk],
    timeout: float = 10.0,
    seal: Callable[[bytes], bytes] = bytes,
) -> None:
    """Chunks first, manifest last: a device that sees the manifest can always find every chunk.

    ``seal`` makes the manifest's bytes as sent: the gateway's signature in signed mode."""
    for chunk in chunks:
        if not link.publish(
            topics.chunk(manifest.version, chunk.index), wire.encode(chunk), retain=True, timeout=timeout
        ):
            raise ValueRejected("publish", f"broker did not acknowledge chunk {chunk.index}")
    if not link.publish(topics.manifest, seal(wire.encode(manifest)), retain=True, timeout=timeout):
        raise ValueRejected("publish", "broker did not acknowledge the manifest")


class ChunkAssembler:
    """Collects the chunks of one manifest's model, refusing anything that does not belong."""

    def __init__(self, manifest: wire.ModelManifest) -> None:
        self.manifest = manifest
        self.parts: dict[int, bytes] = {}

    def add(self, payload: bytes) -> bool:
        """Take one chunk message (untrusted bytes); True once every chunk is here."""
        m = self.manifest
        chunk = wire.decode(payload, wire.Limits(max_chunk_bytes=max(m.chunk_size, 1)), expect=wire.ModelChunk)
        if chunk.version != m.version:
            raise ValueRejected(
                "modelchunk.version", f"chunk of {chunk.version.hex()[:12]}, want {m.version.hex()[:12]}"
            )
        if chunk.index >= m.chunk_count:
            raise ValueRejected("modelchunk.index", f"chunk {chunk.index} of a {m.chunk_count}-chunk model")
        if m.chunk_digests and chunk.digest != m.chunk_digests[chunk.index]:
            raise ValueRejected("modelchunk.digest", f"chunk {chunk.index} is not the one the manifest lists")
        expected = m.chunk_size if chunk.index < m.chunk_count - 1 else m.size - m.chunk_size * (m.chunk_count - 1)
        if len(chunk.data) != expected:
            raise ValueRejected(
                "modelchunk.data", f"chunk {chunk.index} has {len(chunk.data)} bytes, {expected} expected"
            )
        self.parts[chunk.index] = chunk.data
        return self.complete

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.manifest.chunk_count

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.chunk_count) if i not in self.parts]

    def result(self) -> bytes:
        if not self.complete:
            raise ValueRejected("model", f"chunks {self.missing()[:10]} missing")
        model = b"".join(self.parts[i] for i in range(self.manifest.chunk_count))
        if hashlib.sha256(model).digest() != self.manifest.version:
            self.parts.clear()
            raise ValueRejected("model", "reassembled model does not match the manifest's sha256")
        return model
