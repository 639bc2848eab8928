"""``tinyfed bridge run``: every board on the listed serial ports joins the federation as a device.

One thread per port opens it, greets the board (retrying until one
answers, so a board may be plugged in after the bridge starts), and hands
it to a :class:`~firmware_bridge.member.BoardMember`. The device id is the
chip id the board reports in HELLO, or the one given as ``URL#ID``.

Each board is its own federation member with its own provisioned identity
(``bundles``: ``DIR/<device id>/`` as ``tinyfed provision device`` writes
it): its certificate on the broker, its key on what it sends. The bridge
verifies the gateway's signature on every manifest, task and receipt on
the board's behalf (the member's own checks) and streams a board only a
model that passed them (docs/serial-protocol.md, "Trust").
"""

from __future__ import annotations

import logging
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from edge_runtime import wire
from edge_runtime.config import ConfigError
from edge_runtime.member import MemberSettings
from edge_runtime.transport.mqtt import ClientIdConflict
from edge_runtime.transport.topics import check_id

from .driver import BoardDriver
from .errors import BoardProblem
from .member import BoardMember, member_settings, with_bundle

log = logging.getLogger(__name__)


@dataclass
class PortSpec:
    url: str
    device_id: str = ""  # empty: the board's own id from HELLO

    @classmethod
    def parse(cls, text: str) -> PortSpec:
        """``/dev/ttyACM0``, ``socket://10.0.0.5:4000#greenhouse-3``: a pyserial URL and an optional id."""
        url, _, device_id = text.partition("#")
        if not url:
            raise ValueError("no serial port URL before the '#'")
        if device_id:
            check_id("device id", device_id)
        return cls(url, device_id)

    def check(self) -> None:
        """Raise ValueError when this cannot be a serial port: a device file that does not exist (a typo, or a
        board on another port), a file that is not a character device, or a URL pyserial has no handler for.

        A URL's far end (``socket://``, ``rfc2217://``) may come up after the bridge does, so only its form
        is checked here; the bridge keeps trying to reach it.
        """
        if "://" in self.url:
            import serial

            try:
                serial.serial_for_url(self.url, do_not_open=True)
            except (ValueError, serial.SerialException) as exc:
                raise ValueError(f"not a serial port URL pyserial knows: {exc}") from exc
            return
        path = Path(self.url)
        if not path.exists():
            raise ValueError(f"no such serial port; {_present_ports()}")
        if not stat.S_ISCHR(path.stat().st_mode):
            raise ValueError(f"not a serial device (not a character device); {_present_ports()}")


def _present_ports() -> str:
    """The serial ports this machine has now, as pyserial lists them, to show next to a wrong one."""
    from serial.tools import list_ports

    ports = sorted(port.device for port in list_ports.comports())
    return f"serial ports here: {', '.join(ports)}" if ports else "no serial ports are attached here"


class Bridge:
    def __init__(
        self,
        ports: list[PortSpec],
        settings: MemberSettings,
        baud: int,
        heartbeat: float = 5.0,
        bundles: Path | None = None,
    ) -> None:
        self.ports = ports
        self.settings = settings
        self.bundles = bundles  # DIR/<device id>/: each board's identity; None: settings.trust for every board
        self.baud = baud
        self.heartbeat = heartbeat
        self.members: dict[str, BoardMember] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # A board whose MQTT client id another client took (two bridges with one board id): the bridge stops.
        self.conflict: ClientIdConflict | None = None
        self.conflicted = threading.Event()

    def start(self) -> Bridge:
        for port in self.ports:
            thread = threading.Thread(target=self._attach, args=(port,), name=f"bridge-{port.url}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _attach(self, port: PortSpec) -> None:
        while not self._stop.is_set():
            try:
                driver = BoardDriver(port.url, baud=self.baud)
            except BoardProblem as exc:
                log.warning("%s", exc)
                self._stop.wait(self.heartbeat)
                continue
            try:
                hello = driver.hello(timeout=max(5.0, self.heartbeat))
            except BoardProblem as exc:
                log.warning("no board answers on %s yet (%s); trying again", port.url, exc)
                driver.close()
                self._stop.wait(self.heartbeat)
                continue
            if self.bundles is not None and not port.device_id:
                # The board's HELLO id is its own word: with bundles it would choose which identity it gets.
                log.error("the board on %s is not bridged: with --bundles every port names its board, as "
                          "--port '%s#ID'", port.url, port.url)  # fmt: skip
                driver.close()
                return
            try:
                check_id("device id", port.device_id or hello.board_id or "-")
            except wire.WireError as exc:
                log.error("the board on %s is not bridged: it reports %s; give one as --port '%s#ID'", port.url, exc,
                          port.url)  # fmt: skip
                driver.close()
                return
            settings = member_settings(self.settings, hello, port.device_id or "")
            if port.device_id:
                settings.device_id = port.device_id
                settings.storage = self.settings.storage / port.device_id
            if not settings.device_id:
                log.error("the board on %s reports no id; give one as --port '%s#ID'", port.url, port.url)
                driver.close()
                return
            if self.bundles is not None:
                try:
                    settings = with_bundle(settings, self.bundles)
                except ConfigError as exc:
                    log.error("the board on %s is not bridged: %s", port.url, exc)
                    driver.close()
                    return
            member = BoardMember(driver, settings, heartbeat=self.heartbeat)
            member.link.on_fatal_hooks.append(self._on_conflict)
            member.start()
            self.members[settings.device_id] = member
            log.info(
                "board %s on %s joined federation %s (%s, %d KiB RAM, %d samples)",
                settings.device_id,
                port.url,
                settings.federation,
                hello.firmware,
                hello.ram // 1024,
                hello.samples,
            )
            return

    def _on_conflict(self, conflict: ClientIdConflict) -> None:
        if self.conflict is None:
            self.conflict = conflict
        self.conflicted.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for member in list(self.members.values()):
            member.stop(timeout=10)
