"""The emulated Raspberry Pi userland (scripts/pi-userland.sh) from Python: for tests/pi/ and bench/pi_emulated.py.

One :class:`Userland` is one "freshly flashed" board: the cached Debian bookworm arm64 userland under an overlay
of its own (``--overlay``), so what one session installs is seen by its later commands and by no other session,
and the cache stays as debootstrap left it. Paths given to :meth:`Userland.run` with ``binds`` appear at the
same place inside, and the host's loopback is the userland's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pi-userland.sh"
INSTALL_SCRIPT = REPO / "scripts" / "pi-install.sh"
PREFIX = "/opt/tinyfed"  # where the units look for tinyfed (deploy/systemd), and where pi-install.sh puts it
# The board's core for each Pi: scripts/pi-userland.sh pins QEMU_CPU to it (qemu's default `max` misleads XNNPACK).
CORES = {4: "cortex-a72", 5: "cortex-a76"}


def unavailable() -> str | None:
    """Why the emulated Pi cannot run here, or None: root, the tools, and a built userland are needed."""
    if sys.platform != "linux":
        return "the emulated Pi needs Linux (binfmt_misc, chroot)"
    if os.geteuid() != 0:
        return "the emulated Pi needs root (chroot and mounts): run the stage as root, as CI does"
    for tool in ("debootstrap", "qemu-aarch64-static", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install debootstrap qemu-user-static binfmt-support (.ci/run)"
    if subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True).returncode != 0:
        return "the userland is not built: scripts/pi-userland.sh build (about 2-5 minutes, once)"
    return None


@dataclass
class Userland:
    """A board: the cached userland plus this overlay's changes (``overlay`` is a host directory)."""

    overlay: Path
    pi: int = 4
    binds: list[Path] = field(default_factory=list)

    def command(self, argv: Sequence[str], binds: Sequence[Path] = (), cpu: str | None = None) -> list[str]:
        del cpu  # set through the environment (run), kept for symmetry with run's signature
        args = ["bash", str(SCRIPT), "run", "--pi", str(self.pi), "--overlay", str(self.overlay)]
        for path in [*self.binds, *binds]:
            args += ["--bind", str(path)]
        return [*args, "--", *argv]

    def environment(self, cpu: str | None = None, host_cpuinfo: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "QEMU_CPU"}
        if cpu is not None:
            env["QEMU_CPU"] = cpu  # the script keeps a QEMU_CPU it is given: only to show what `max` does
        if host_cpuinfo:
            env["PI_USERLAND_CPUINFO"] = "host"
        return env

    def run(
        self,
        argv: Sequence[str],
        binds: Sequence[Path] = (),
        timeout: float = 900.0,
        cpu: str | None = None,
        host_cpuinfo: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside; ``check`` raises with the command's output on a non-zero exit."""
        proc = subprocess.run(
            self.command(argv, binds), env=self.environment(cpu, host_cpuinfo), capture_output=True, text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"inside the emulated Pi, {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def popen(self, argv: Sequence[str], binds: Sequence[Path] = (), **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            self.command(argv, binds), env=self.environment(), text=True, **kwargs
        )

    def path(self, inside: str) -> Path:
        """Where a file inside the board is on the host: its overlay's upper layer (what this board changed)."""
        return self.overlay / "upper" / inside.lstrip("/")


def build_wheel(out: Path) -> Path:
    """tinyfed's wheel from this checkout, built on the host (pure Python): what a Pi owner would pip install.

    Pure because ``TINYFED_BUILD_C_EXTENSION=0``: the gateway's C intake path would make it an x86-64 wheel."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", str(out),
         str(REPO)],
        check=True, capture_output=True, text=True, env={**os.environ, "TINYFED_BUILD_C_EXTENSION": "0"},
    )
    (wheel,) = sorted(out.glob("tinyfed-*.whl"))
    return wheel
