"""A model published as retained chunks reaches a device through Mosquitto, verified, installed atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_runtime import wire
from edge_runtime.model.errors import ModelError
from edge_runtime.model.graph import Graph
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.model_store import ModelStore
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.chunking import ChunkAssembler, make_manifest, publish_model
from edge_runtime.transport.fetcher import ModelFetcher
from edge_runtime.transport.topics import Topics
from tests.helpers import log_line, start_link

TOPICS = Topics("dist")
WAIT = 20.0


def _validate(model: bytes) -> None:
    read_graph(model).check_int8()  # a device would load it in its interpreter; the gateway-free check is enough here


def _publish(broker: MosquittoProcess, model: bytes, chunk_size: int = 4096) -> wire.ModelManifest:
    gateway = start_link(broker, "gateway")
    try:
        assert gateway.wait_ready(WAIT)
        manifest, chunks = make_manifest(model, [wire.TrainableTensor(1, (2, 2))], chunk_size)
        publish_model(gateway, TOPICS, manifest, chunks)
        return manifest
    finally:
        gateway.stop()


def test_model_arrives_in_chunks_and_installs(broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph) -> None:
    model = write_graph(digits_mlp)
    manifest = _publish(broker, model)
    assert manifest.chunk_count == -(-len(model) // 4096) > 1
    device = start_link(broker, "dev-1")
    store = ModelStore(tmp_path / "models")
    fetcher = ModelFetcher(device, TOPICS, store, _validate)
    try:
        assert fetcher.installed.wait(WAIT)
        assert store.current() == model and store.current_version == manifest.version
    finally:
        device.stop()


def test_a_one_chunk_model_lists_no_chunk_digest_and_still_installs(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    """Its one chunk's sha256 is the version: the manifest, which every device receives each round, does not carry
    it twice; the chunk is still checked against the version before it is installed."""
    model = write_graph(digits_mlp)
    manifest = _publish(broker, model, chunk_size=len(model))
    assert manifest.chunk_count == 1 and manifest.chunk_digests == []
    assert wire.ModelManifest.Key.CHUNK_DIGESTS not in manifest.to_cbor()
    device = start_link(broker, "dev-1")
    store = ModelStore(tmp_path / "models")
    fetcher = ModelFetcher(device, TOPICS, store, _validate)
    try:
        assert fetcher.installed.wait(WAIT)
        assert store.current() == model and store.current_version == manifest.version
    finally:
        device.stop()
    several, _ = make_manifest(model, [], chunk_size=4096)
    assert len(several.chunk_digests) == several.chunk_count > 1


def test_damaged_chunk_is_refused_and_fetched_again_while_the_old_model_serves(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph, caplog: pytest.LogCaptureFixture
) -> None:
    old = write_graph(digits_mlp)
    store = ModelStore(tmp_path / "models")
    store.install(old, make_manifest(old, [])[0].version)
    new_graph = digits_mlp.copy()
    new_graph.description = "round 2"
    new = write_graph(new_graph)
    manifest = _publish(broker, new)
    device = start_link(broker, "dev-1")
    fetcher = ModelFetcher(device, TOPICS, store, _validate)
    original = fetcher._on_chunk
    damaged: list[str] = []

    def flaky_link(topic: str, payload: bytes) -> None:
        """Fault injection on the receive path: the first copy of chunk 1 arrives with a flipped bit."""
        if topic.endswith("/chunk/1") and not damaged:
            damaged.append(topic)
            assert store.current() == old  # mid-transfer, the old model is still the one in use
            payload = payload[:-40] + bytes([payload[-40] ^ 0x10]) + payload[-39:]
        original(topic, payload)

    fetcher._on_chunk = flaky_link  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING):
            assert fetcher.installed.wait(WAIT)
        assert damaged and fetcher.refused == 1
        assert "refused chunk 1" in caplog.text and "does not match its sha256" in caplog.text
        assert store.current() == new and store.current_version == manifest.version
    finally:
        device.stop()


def test_a_model_that_does_not_load_is_not_installed(
    broker: MosquittoProcess, tmp_path: Path, digits_mlp: Graph
) -> None:
    good = write_graph(digits_mlp)
    store = ModelStore(tmp_path / "models")
    store.install(good, make_manifest(good, [])[0].version)
    bad = _publish(broker, b"TFL3 but not a model" * 100)
    with log_line("edge_runtime.transport.fetcher", f"model {bad.version.hex()[:12]} not installed") as refused:
        device = start_link(broker, "dev-1")
        fetcher = ModelFetcher(device, TOPICS, store, _validate)
        try:
            assert refused.wait(WAIT), "the fetcher did not report the model it could not load"
            assert not fetcher.installed.is_set()
            assert store.current() == good  # the last good model keeps serving
        finally:
            device.stop()


def test_store_refuses_wrong_hash_and_rolls_back(tmp_path: Path, digits_mlp: Graph) -> None:
    store = ModelStore(tmp_path / "m")
    first = write_graph(digits_mlp)
    v1 = make_manifest(first, [])[0].version
    store.install(first, v1)
    with pytest.raises(ModelError, match="does not hash"):
        store.install(first + b"x", v1)
    g2 = digits_mlp.copy()
    g2.description = "v2"
    second = write_graph(g2)
    v2 = make_manifest(second, [])[0].version
    store.install(second, v2)
    assert ModelStore(tmp_path / "m").current() == second  # survives a restart
    assert store.rollback() == v1 and store.current() == first
    with pytest.raises(ModelError, match="failed to load"):
        store.install(b"junk", make_manifest(b"junk", [])[0].version, _validate)
    assert store.current() == first


def test_assembler_refuses_foreign_and_misshapen_chunks() -> None:
    model = bytes(range(256)) * 40
    manifest, chunks = make_manifest(model, [], chunk_size=4000)
    assembler = ChunkAssembler(manifest)
    _, other_chunks = make_manifest(b"other" * 900, [], chunk_size=4000)
    with pytest.raises(wire.ValueRejected, match="version"):
        assembler.add(wire.encode(other_chunks[0]))
    for chunk in reversed(chunks):
        assembler.add(wire.encode(chunk))
    assert assembler.result() == model
