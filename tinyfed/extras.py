"""Which of tinyfed's extras are installed here, read from the installed distribution's own metadata.

pyproject.toml is the one place an extra's requirements are written; pip
copies them into the distribution's metadata (``Requires-Dist: paho-mqtt>=2.0;
extra == "gateway"``), and this module reads them back to decide whether a
command can run. An extra may name others (``tinyfed[device,gateway]``);
those are followed. Environment markers are evaluated for this machine, so
a requirement that does not apply here (an interpreter wheel for another
CPU) is not asked for.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "tinyfed"
# The import name of each optional requirement whose distribution is named otherwise; the rest import under their
# own name (cobs, psutil, matplotlib, amqtt, cryptography). tests/test_errors.py checks this against the installed
# distributions' own file lists, so a new extra cannot be missed here.
IMPORT_NAMES = {
    "sklearn": "scikit-learn",
    "paho": "paho-mqtt",
    "serial": "pyserial",
    "ai_edge_litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "tflite_micro": "tflite-micro",
}
# Extras that are for working on tinyfed, not for running it: never the one to suggest.
NOT_SUGGESTED = frozenset({"dev"})


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class InstalledExtras:
    """Answers "what is missing here for extra X?" from a distribution's metadata.

    ``requirements`` are its ``Requires-Dist`` strings, ``extras`` its
    ``Provides-Extra`` names, and ``version_of`` finds an installed package's
    version (None when absent). :meth:`from_metadata` reads all three from
    this environment; tests pass their own.
    """

    def __init__(
        self,
        requirements: Iterable[str],
        extras: Iterable[str],
        version_of: Callable[[str], str | None] = installed_version,
        project: str = PROJECT,
    ) -> None:
        self.project = canonicalize_name(project)
        self.declared = frozenset(canonicalize_name(e) for e in extras)
        self.version_of = version_of
        self._core = frozenset(
            canonicalize_name(r.name)
            for r in (Requirement(line) for line in requirements)
            if r.marker is None or r.marker.evaluate({"extra": ""})
        )
        # Core requirements have no marker or one that holds without an extra; pip installed those already.
        self._optional = [
            r
            for r in (Requirement(line) for line in requirements)
            if r.marker is not None and not r.marker.evaluate({"extra": ""})
        ]

    @classmethod
    def from_metadata(cls, project: str = PROJECT) -> InstalledExtras:
        """This environment's installation of ``project``; none at all means every extra is missing."""
        try:
            metadata = importlib.metadata.metadata(project)
        except importlib.metadata.PackageNotFoundError:
            return cls([], [], project=project)
        return cls(metadata.get_all("Requires-Dist") or [], metadata.get_all("Provides-Extra") or [], project=project)

    def missing(self, extras: Iterable[str]) -> list[str]:
        """Requirements of ``extras`` (and of the extras they name) not met here, as ``paho-mqtt>=2.0``."""
        unmet: list[str] = []
        seen: set[str] = set()
        pending = [canonicalize_name(e) for e in extras]
        while pending:
            extra = pending.pop(0)
            if extra in seen:
                continue
            seen.add(extra)
            if extra not in self.declared:
                unmet.append(f"{self.project}[{extra}] (not an extra of this installation)")
                continue
            for requirement in self._optional:
                assert requirement.marker is not None
                if not requirement.marker.evaluate({"extra": extra}):
                    continue  # another extra's, or this extra's on another kind of machine
                if canonicalize_name(requirement.name) == self.project:
                    pending.extend(canonicalize_name(e) for e in sorted(requirement.extras))
                    continue
                problem = self._problem(requirement)
                if problem is not None and problem not in unmet:
                    unmet.append(problem)
        return unmet

    def providing(self, module: str) -> list[str]:
        """The extras whose own requirements bring top-level ``module``, smallest first ([] when none does)."""
        distribution = canonicalize_name(IMPORT_NAMES.get(module, module))
        if distribution in self._core:
            return []  # every install has it: missing means a broken install, not a missing extra
        sizes: dict[str, int] = {}
        for requirement in self._optional:
            assert requirement.marker is not None
            for extra in self.declared - NOT_SUGGESTED:
                if requirement.marker.evaluate({"extra": extra}):
                    sizes[extra] = sizes.get(extra, 0) + 1
        found = {
            extra
            for requirement in self._optional
            if canonicalize_name(requirement.name) == distribution
            for extra in sizes
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra})
        }
        return sorted(found, key=lambda extra: (sizes[extra], extra))

    def _problem(self, requirement: Requirement) -> str | None:
        shown = f"{requirement.name}{requirement.specifier}"
        version = self.version_of(requirement.name)
        if version is None:
            return shown
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            return f"{shown} ({version} is installed)"
        return None
