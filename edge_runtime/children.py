"""Helper processes (a demo's or a test's Mosquitto, a QEMU board) that die with the process that started them.

A test run stopped by a timeout, or a demo killed with SIGKILL, never reaches the ``stop()`` that would end
its broker or board: they kept running, held their ports and ptys, and the next run met them. Linux's
parent-death signal ends them with their parent instead. It is set by util-linux's ``setpriv``, which
``execve``s the real command, so the child keeps the PID the caller sees and signals still reach it
(Python's ``preexec_fn`` could set it too, but is not safe in a process with threads, and ours have).

The signal fires when the *thread* that started the child ends, not the process: a child started from a
worker thread would die when that thread returns. So only the main thread asks for it; from other threads,
and where ``setpriv`` is missing (not Linux, a minimal image), the command is run as given.
"""

from __future__ import annotations

import shutil
import sys
import threading


def tied_to_this_process(command: list[str]) -> list[str]:
    """``command``, prefixed so that the process it starts is killed (SIGKILL) when this process dies."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return command
    return [setpriv, "--pdeathsig", "KILL", "--", *command]
