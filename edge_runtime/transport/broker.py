"""Run a Mosquitto broker process on a loopback port: the tests' broker and the demo's zero-setup default.

Sessions, queued QoS 1 messages and retained messages persist in the
broker's own directory, saved on every change, so a broker killed with
SIGKILL and restarted on the same port has lost nothing it acknowledged.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import TinyfedError

SEARCH = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(OSError, TinyfedError):
    """No broker could be started here (Mosquitto missing or not listening in time, amqtt not installed)."""


def find_mosquitto() -> str | None:
    for candidate in SEARCH:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoProcess:
    """One Mosquitto on 127.0.0.1; ``stop(kill=True)`` is a SIGKILL, ``start()`` again reuses the port and state."""

    def __init__(self, port: int | None = None, workdir: str | Path | None = None, binary: str | None = None) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise BrokerError("mosquitto not found: apt-get install mosquitto (Debian) or set a broker URL")
        self.binary: str = found
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="tinyfed-mosquitto-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, Mosquitto drops to user 'mosquitto' and then cannot write its persistence
            # file into our directory: sessions would silently not survive a restart. Stay who we are.
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_on_changes true\n"
            "autosave_interval 1\n"
            "max_queued_messages 10000\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err.strip()}")
            with contextlib.closing(socket.socket()) as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
