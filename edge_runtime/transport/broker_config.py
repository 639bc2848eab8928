"""Where the broker is and how to hold a session with it, without paho.

Configuration files (devices, gateway, bridge) are read and checked with
these alone, so reading a ``[broker]`` table never needs the MQTT client
installed; ``mqtt.py`` is the connection that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from ..errors import ExitCode, TinyfedError


class TransportError(RuntimeError, TinyfedError):
    """The broker cannot be reached or refused us; the message says which and where."""

    exit_code = ExitCode.NO_BROKER


@dataclass
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"  # mqtt:// or mqtts:// (TLS)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: str = "5"  # "5", "3.1.1" or "auto"
    keepalive: int = 30
    session_expiry: int = 24 * 3600  # seconds the broker keeps our session (and queued QoS 1 messages)
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    connack_timeout: float = 10.0  # seconds a broker may take to answer CONNECT before we drop the attempt

    def endpoint(self) -> tuple[str, int, bool]:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
            raise TransportError(f"broker URL {self.url!r}: expected mqtt://host:port or mqtts://host:port")
        tls = parsed.scheme in ("mqtts", "ssl")
        return parsed.hostname, parsed.port or (8883 if tls else 1883), tls
