"""Helpers the MQTT tests share: links that reconnect quickly, and waits that say what did not happen.

Waits here are bounded by an upper limit for loopback delivery, never a performance assertion: each
returns as soon as what it waits for has happened, and a timeout fails the test naming the missing event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Generic, TypeVar

from edge_runtime import wire
from edge_runtime.transport.broker import MosquittoProcess
from edge_runtime.transport.mqtt import BrokerConfig, MqttLink

T = TypeVar("T")
POLL = 0.02  # seconds between looks at a state the code offers no event for
# Tests of anything but trust run without signatures, and say so: signed is every configuration's default, so a
# gateway or device without keys refuses to start (tests/test_signatures.py tests that, and the signed paths).
INSECURE = {"mode": "insecure"}
INSECURE_TOML = '\n[trust]\nmode = "insecure"\n'


def fast_config(broker: MosquittoProcess, **overrides: object) -> BrokerConfig:
    """A link config whose reconnect backoff is short: a test that restarts the broker need not wait a minute."""
    options: dict[str, object] = {"url": broker.url, "backoff_base": 0.05, "backoff_cap": 0.5, **overrides}
    return BrokerConfig(**options)  # type: ignore[arg-type]


def start_link(broker: MosquittoProcess, name: str, **kwargs: object) -> MqttLink:
    return MqttLink(fast_config(broker), name, **kwargs).start()  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll a state the code exposes no event for; fail naming ``what`` did not happen within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


class Recorder(Generic[T]):
    """What a callback delivered, in order, with a condition variable to wait on until enough has arrived."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = threading.Condition()

    def append(self, item: T) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[list[T]], object], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; got {self.items!r}")


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextmanager
def log_line(logger: str, text: str) -> Iterator[threading.Event]:
    """An event set when ``logger`` logs a line containing ``text``: for outcomes the code only reports by logging.

    Sees what the logger's level lets through: warnings and errors always, as the logging default.
    """
    handler = _Seen(text)
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield handler.event
    finally:
        target.removeHandler(handler)


def watch_presence(broker: MosquittoProcess, topic: str, name: str) -> tuple[MqttLink, Recorder[wire.Presence]]:
    """A started link recording every presence message on ``topic`` in order: births, deaths, last wills."""
    seen: Recorder[wire.Presence] = Recorder()
    link = MqttLink(fast_config(broker), name)
    link.subscribe(topic, lambda _, payload: seen.append(wire.decode(payload, expect=wire.Presence)))
    return link.start(), seen


class Lines:
    """A process's output, read line by line on a thread, so a test can wait for a line while the process runs."""

    def __init__(self, stream: IO[str] | None, wait: float = 60.0) -> None:
        assert stream is not None, "start the process with stdout/stderr=subprocess.PIPE"
        self.seen: Recorder[str] = Recorder()
        self._wait = wait
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.seen.append(line)

    def wait_for(self, text: str, what: str) -> None:
        self.seen.wait_until(lambda got: any(text in line for line in got), self._wait, what)

    def text(self) -> str:
        """Everything, once the process has closed the stream (it has exited)."""
        self._thread.join(self._wait)
        return "".join(self.seen.items)
