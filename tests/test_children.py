"""A broker started by a process that is killed (a test run's timeout, a demo's SIGKILL) goes with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_runtime.children import tied_to_this_process
from tests.helpers import wait_for

STARTS_A_BROKER = """
import sys, time
from edge_runtime.transport.broker import MosquittoProcess
broker = MosquittoProcess(workdir=sys.argv[1]).start()
print(broker.process.pid, broker.port, flush=True)
time.sleep(600)  # killed long before: the test SIGKILLs this interpreter
"""


def _alive(pid: int) -> bool:
    """Running, not merely a zombie that no init process has reaped yet (containers often have none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux's setpriv sets the parent-death signal")
def test_a_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTS_A_BROKER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline().split()[0])
        assert _alive(pid) and Path(f"/proc/{pid}/exe").resolve().name == "mosquitto"  # setpriv exec'd it
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for(lambda: not _alive(pid), 30, f"mosquitto (pid {pid}) to die with its killed parent")
    finally:
        parent.kill()
        parent.wait(timeout=30)


def test_only_the_main_thread_ties_a_child_to_itself() -> None:
    """The signal fires when the starting *thread* ends: a worker thread's child would die with the thread."""
    command = ["mosquitto", "-c", "x.conf"]
    from_worker: list[list[str]] = []
    worker = threading.Thread(target=lambda: from_worker.append(tied_to_this_process(command)))
    worker.start()
    worker.join()
    assert from_worker == [command]
    tied = tied_to_this_process(command)
    if shutil.which("setpriv") is not None and sys.platform.startswith("linux"):
        assert tied[:4] == [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"] and tied[4:] == command
    else:
        assert tied == command
    assert os.path.basename(tied[-3]) == "mosquitto"
