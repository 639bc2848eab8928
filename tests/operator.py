"""Helpers for the operator's-view tests: devices that answer every task, and reading a scrape."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess

from .federation import TOPICS, ManualDevice, small_update


class AnsweringDevice(ManualDevice):
    """A hand-made device that answers each training task with a small update, as soon as it arrives."""

    def __init__(self, broker: MosquittoProcess, name: str, sizes: dict[int, int]) -> None:
        self.sizes = sizes
        super().__init__(broker, name)

    def _on_task(self, topic: str, payload: bytes) -> None:
        task = wire.decode(payload, expect=wire.Task)
        if not task.evaluate_only:
            self.link.publish(TOPICS.update(self.name), wire.encode(small_update(self.name, task, self.sizes)))
        super()._on_task(topic, payload)


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, keyed ``name{label="value",...}`` (labels sorted)."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
