"""Helpers for the operator's-view tests: devices that answer every task, and reading a scrape."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess

from .federation import TOPICS, ManualDevice, small_update


class AnsweringDevice(ManualDevice):
    """A hand-made device that answers each training task with a small update, as soon as it arrives."""

    def __init__(self, broker: MosquittoProcess, name: str, sizes: dict[int, int], gate: bool = False) -> None:
        self.sizes = sizes
        self.gate = threading.Event()  # with gate=True, tasks wait until open_gate(): a test holds a round open
        self._held: list[wire.Task] = []
        self._held_lock = threading.Lock()
        if not gate:
            self.gate.set()
        super().__init__(broker, name)

    def open_gate(self) -> None:
        with self._held_lock:
            self.gate.set()
            held, self._held = self._held, []
        for task in held:
            self._answer(task)

    def _on_task(self, topic: str, payload: bytes) -> None:
        task = wire.decode(payload, expect=wire.Task)
        with self._held_lock:
            hold = not self.gate.is_set()
            if hold:
                self._held.append(task)
        if not hold:
            self._answer(task)
        super()._on_task(topic, payload)

    def _answer(self, task: wire.Task) -> None:
        if not task.evaluate_only:
            update = small_update(self.name, task, self.sizes)
            if task.report:  # a made-up learning curve, so the dashboard's chart has a line to draw
                update.metrics = {"eval_accuracy": min(0.95, 0.3 + 0.08 * task.round), "eval_loss": 2.0 / task.round}
            self.link.publish(TOPICS.update(self.name), wire.encode(update))


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, keyed ``name{label="value",...}`` (labels sorted)."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
