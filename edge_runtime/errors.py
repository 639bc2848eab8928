"""The root of tinyfed's errors and the exit codes the ``tinyfed`` command returns, in one place.

Every error tinyfed raises on purpose is a :class:`TinyfedError`, mixed into
the class's historical base (``WireError`` is still a ``ValueError``,
``BrokerError`` still an ``OSError``), so a caller can catch "anything
tinyfed refused" in one clause without breaking older ``except`` clauses.
Each class carries the exit code a command ends with when the error
reaches the top, so the mapping lives with the error, not in each command.
The numbers are documented for operators (systemd ``RestartPreventExitStatus``,
scripts) and must not change.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """What ``tinyfed`` returns to the shell."""

    OK = 0
    BAD_INPUT = 2  # configuration, option, data or model file at fault (argparse uses 2 for usage errors too)
    NO_BROKER = 3  # the MQTT broker could not be reached at start
    STORAGE_LOCKED = 4  # another process holds the storage directory
    ID_CONFLICT = 5  # another client holds this identity: a device id in use twice, a second gateway
    INTERRUPTED = 130  # Ctrl-C outside a command that stops cleanly on signals (128 + SIGINT)


class TinyfedError(Exception):
    """Base of every error tinyfed raises on purpose; the message names what was wrong and where."""

    exit_code: ClassVar[ExitCode] = ExitCode.BAD_INPUT
