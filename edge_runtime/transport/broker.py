"""Run a Mosquitto broker process on a loopback port: the tests' broker and the demo's zero-setup default.

Sessions, queued QoS 1 messages and retained messages persist in the
broker's own directory. By default they are saved on every change, so a
broker killed with SIGKILL and restarted on the same port has lost nothing
it acknowledged: what the tests of broker crashes need. That costs a
write of the broker's whole database per message (about 1,800 a round at
1,000 devices), so a hub's broker saves every ``HUB_AUTOSAVE_S`` seconds
and on a clean stop instead (``autosave_interval``; the demo's broker and
the ``round_scale`` benchmark run that way, docs/operations.md): what a
crash loses of the broker's state in between, tinyfed recovers end to end
(devices resend unreceipted updates, the gateway republishes its model
and state on reconnect and replaces a device whose task was lost).

Given a :class:`TlsListener` (the files ``tinyfed provision init`` writes),
the broker is the secured one a federation runs on: TLS only, a client
certificate from the federation's CA required, the certificate's common
name taken as username and client id, the ACL file and the CRL enforced.
:meth:`MosquittoProcess.reload` re-reads ACL and CRL after a revocation.
The listener's lines come from :meth:`TlsListener.mosquitto_config`, the
same text provisioning writes for the hub's own Mosquitto.
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
from dataclasses import dataclass
from pathlib import Path

from ..children import tied_to_this_process
from ..errors import TinyfedError

SEARCH = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
HUB_AUTOSAVE_S = 60  # a hub's broker saves its state this often (and on a clean stop), not on every change


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


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener that admits only clients holding a certificate from ``ca_file`` (Mosquitto 2.0 syntax).

    - ``use_identity_as_username``: the certificate's common name is the client's username, the name the
      ACL file grants topics to, so nothing a client sends can choose its identity;
    - ``use_username_as_clientid``: that name is also its client id, so one client cannot take over another's
      session (and cut it off) by connecting with its client id;
    - ``crl_file``: certificates revoked by the CA are refused at the TLS handshake; Mosquitto re-reads
      the CRL and the ACL file on SIGHUP, and a connection already open keeps its TLS session but is
      checked against the new ACL at every publish and delivery.

    ``acl_file`` and ``allow_anonymous`` are global settings (``per_listener_settings false``), written here
    because this listener is the only one a secured broker has.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    acl_file: Path | None = None
    crl_file: Path | None = None

    def mosquitto_config(self, port: int, bind: str | None = None) -> str:
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"listener {port} {bind}" if bind else f"listener {port}",
            f"cafile {self.ca_file}",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            "tls_version tlsv1.2",  # the minimum; TLS 1.3 is used where both sides have it
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
        ]
        if self.crl_file is not None:
            lines.append(f"crlfile {self.crl_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return "\n".join(lines) + "\n"


class MosquittoProcess:
    """One Mosquitto on 127.0.0.1; ``stop(kill=True)`` is a SIGKILL, ``start()`` again reuses the port and state.

    With ``tls``, the listener is that TLS listener (client certificates, ACL, CRL) and :attr:`url` is ``mqtts://``.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        binary: str | None = None,
        tls: TlsListener | None = None,
        autosave_interval: int | None = None,
    ) -> None:
        """``autosave_interval``: None saves the broker's state on every change (survives SIGKILL exactly);
        seconds save it that often and on a clean stop (a hub's setting, ``HUB_AUTOSAVE_S``)."""
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
        self.tls = tls
        listener = (
            tls.mosquitto_config(self.port, "127.0.0.1")
            # "Reloading config." is an information line: reload() waits for it.
            + "log_type information\n"
            if tls
            else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        )
        self.config_path.write_text(
            listener
            # Started as root, Mosquitto drops to user 'mosquitto' and then cannot write its persistence
            # file into our directory: sessions would silently not survive a restart. Stay who we are.
            + f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            + ("autosave_on_changes true\nautosave_interval 1\n" if autosave_interval is None
               else f"autosave_on_changes false\nautosave_interval {int(autosave_interval)}\n")
            # Per client: the gateway's session queues every device's update of a round (10,000 devices: 10,000).
            + "max_queued_messages 100000\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        self.process = subprocess.Popen(
            tied_to_this_process([self.binary, "-c", str(self.config_path)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
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

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: Mosquitto re-reads its ACL file and CRL; returns once it has (secured brokers only).

        Mosquitto reloads on its one event-loop thread, logging "Reloading config." first and then reading
        the files before it handles any further packet, so whatever a caller does after this returns
        (connect, publish) meets the new ACL and CRL.
        """
        if self.tls is None:
            raise BrokerError("reload() is for a broker started with a TlsListener (its ACL and CRL)")
        if self.process is None or self.process.poll() is not None:
            raise BrokerError("mosquitto is not running: nothing to reload")
        seen = self._reloads()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._reloads() <= seen:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.process.returncode} on reload; see {self.log_path}")
            if time.monotonic() >= deadline:
                raise BrokerError(f"mosquitto did not reload within {timeout} s; see {self.log_path}")
            time.sleep(0.02)

    def _reloads(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("Reloading config.")
        except FileNotFoundError:
            return 0

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
