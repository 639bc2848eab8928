"""``tinyfed``: one command, a subcommand per role, each registered by its role.

Subcommands come from the ``tinyfed.commands`` entry points (see
``edge_runtime/command.py``), so this module imports no role. A command
whose extras are not installed is left out of ``--help``; asking for it
prints the ``pip install`` that adds it and exits 2. Errors tinyfed raises
on purpose end here as one ``tinyfed: error:`` line and the exit code the
error class carries (``edge_runtime/errors.py``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from edge_runtime.command import Command, Handler
from edge_runtime.errors import ExitCode, TinyfedError

from .extras import PROJECT, InstalledExtras

GROUP = "tinyfed.commands"
# The order of the help listing: the core, the roles, then what composes them.
ORDER = ("model", "device", "gateway", "bridge", "hil", "demo", "bench")


@dataclass(frozen=True)
class Unavailable:
    command: Command
    missing: list[str]

    def hint(self) -> str:
        extras = self.command.extras
        quoted = [f"'{e}'" for e in extras]
        named = f"{', '.join(quoted[:-1])} and {quoted[-1]} extras" if len(quoted) > 1 else f"{quoted[0]} extra"
        return (
            f"tinyfed {self.command.name} needs the {named} (not installed here: {', '.join(self.missing)}): "
            f"pip install '{PROJECT}[{','.join(extras)}]'"
        )


def discover() -> list[Command]:
    """Every registered command, in :data:`ORDER` then by name; a broken registration is reported, not fatal."""
    found: dict[str, Command] = {}
    for point in importlib.metadata.entry_points(group=GROUP):
        if point.name in found:
            continue  # the same distribution seen twice on sys.path: the first one wins, as for imports
        try:
            command = point.load()
        except Exception as exc:  # one role's broken registration must not take the others' commands down
            print(f"tinyfed: warning: command {point.name} ({point.value}) did not load: {exc}", file=sys.stderr)
            continue
        if not isinstance(command, Command) or command.name != point.name:
            print(f"tinyfed: warning: entry point {point.name} ({point.value}) is not a Command of that name",
                  file=sys.stderr)  # fmt: skip
            continue
        found[point.name] = command
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found.values(), key=lambda c: (rank.get(c.name, len(ORDER)), c.name))


def version() -> str:
    try:
        return importlib.metadata.version(PROJECT)
    except importlib.metadata.PackageNotFoundError:
        from edge_runtime import __version__

        return f"{__version__} (not installed)"


def parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tinyfed", description="Federated learning for IoT devices.")
    top.add_argument("--version", action="version", version=f"tinyfed {version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    return top


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand the user asked for: the first word that is not an option (the top level takes no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None, extras: InstalledExtras | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extras = extras if extras is not None else InstalledExtras.from_metadata()
    commands = discover()
    if not commands:
        print(
            f"tinyfed: error: no commands registered (entry points {GROUP!r}): is tinyfed installed? "
            "pip install -e . (or reinstall it after an upgrade)",
            file=sys.stderr,
        )
        return ExitCode.BAD_INPUT
    available: list[Command] = []
    unavailable: dict[str, Unavailable] = {}
    for command in commands:
        missing = extras.missing(command.extras)
        if missing:
            unavailable[command.name] = Unavailable(command, missing)
        else:
            available.append(command)
    wanted = _command_word(argv)
    if wanted in unavailable:
        print(unavailable[wanted].hint(), file=sys.stderr)
        return ExitCode.BAD_INPUT
    args = parser(available).parse_args(argv)
    try:
        handler: Handler = args.handler
        return handler(args)
    except TinyfedError as exc:
        print(f"tinyfed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, ValueError) as exc:  # a file that cannot be read, a value a library refused: bad input
        print(f"tinyfed: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
