"""The demo's broker when none is configured: Mosquitto if installed, else amqtt in this process.

Only the zero-install demo uses amqtt; tests and deployments use Mosquitto.
What we verified with amqtt 0.12.1 and paho-mqtt 2.2: MQTT 3.1.1 works
(QoS 1, retained messages, last wills, persistent sessions, payloads above
64 KiB); an MQTT 5 CONNECT is refused by closing the socket without a
CONNACK. ``MqttLink`` with ``protocol = "auto"`` takes that as "speak
3.1.1", so the same device and gateway code runs on either broker. amqtt
keeps its state in memory only: a restart loses sessions and retained
messages, which is acceptable for a demo and is why nothing else uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .broker import HUB_AUTOSAVE_S, BrokerError, MosquittoProcess, find_mosquitto, free_port

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerError(
                "no MQTT broker: install Mosquitto (apt-get install mosquitto) or pip install 'tinyfed[demo]'"
            ) from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            # amqtt lets a failed socket close escape as an unhandled exception when it refuses a client
            # (an MQTT 5 CONNECT); the refusal itself is what matters, so keep it out of the user's log.
            loop.set_exception_handler(lambda lp, ctx: log.debug("amqtt: %s", ctx.get("message")))
            self._loop = loop
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # amqtt warns about its own plugin loading
                    self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as exc:  # reported to start()'s caller
                self._error = exc
                self._started.set()
                return
            self._started.set()
            loop.run_forever()
            loop.run_until_complete(self._broker.shutdown())
            loop.close()

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise BrokerError(f"embedded broker did not start on port {self.port}: {self._error}")
        return self  # amqtt's start() returns once its listener is bound

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def demo_broker(workdir: str | Path, prefer: str = "auto") -> Iterator[tuple[str, str]]:
    """A loopback broker for the demo: yields (URL, "mosquitto" or "amqtt"); ``prefer="amqtt"`` skips Mosquitto."""
    if prefer in ("auto", "mosquitto") and find_mosquitto() is not None:
        # A hub's setting: state saved every HUB_AUTOSAVE_S seconds, not on every change (broker.py).
        with MosquittoProcess(workdir=Path(workdir) / "mosquitto", autosave_interval=HUB_AUTOSAVE_S) as mosquitto:
            yield mosquitto.url, "mosquitto"
        return
    if prefer == "mosquitto":
        raise BrokerError("mosquitto asked for but not found on PATH or in /usr/sbin")
    with EmbeddedBroker() as embedded:
        yield embedded.url, "amqtt"
