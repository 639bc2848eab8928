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
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.command import Command, Handler
from edge_runtime.errors import ExitCode, TinyfedError

from .extras import PROJECT, InstalledExtras

GROUP = "tinyfed.commands"
# tinyfed's own top-level packages: a missing module among these is a broken install, not a missing extra.
PACKAGES = frozenset({"edge_runtime", "gateway", "firmware_bridge", "hil", "tinyfed", "bench"})
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, except where there is none to show (flags, unset, required)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default:" in text  # the help says it in words (a default that depends on other options)
            or action.required
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or (not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults; subcommands' parsers are of this class too (argparse
    makes a subparser of its parent's class), so every ``tinyfed ... --help`` has them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    top = Parser(prog="tinyfed", description="Federated learning for IoT devices.")
    top.add_argument("--version", action="version", version=f"tinyfed {version()}", help="print the version and exit")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    return top


def missing_module(exc: ModuleNotFoundError, command: str | None, extras: InstalledExtras) -> str | None:
    """What to install when a command's code imports a package that is not here, or None for tinyfed's own.

    The command's extras were checked before it ran, so this is a package
    only some of a command's paths need (a benchmark's, a backend's); the
    message names the smallest extra that brings it.
    """
    module = (exc.name or "").split(".")[0]
    if not module or module in PACKAGES:
        return None
    what = f"tinyfed {command}" if command else "tinyfed"
    found = extras.providing(module)
    if found:
        return (
            f"{what} needs the Python package {module!r} (the '{found[0]}' extra), which does not import here: "
            f"pip install '{PROJECT}[{found[0]}]'"
        )
    return f"{what} needs the Python package {module!r}, which does not import here: pip install {module}"


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
    args.installed_extras = extras  # for a command that checks more extras on some of its paths (bench)
    try:
        handler: Handler = args.handler
        return handler(args)
    except TinyfedError as exc:
        print(f"tinyfed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `tinyfed gateway status | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and end as a piped Unix tool ends (128 + SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:
        hint = missing_module(exc, wanted, extras)
        if hint is None:
            raise  # one of tinyfed's own modules: a broken install or a bug, and the traceback shows which
        print(f"tinyfed: error: {hint}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except (OSError, ValueError) as exc:  # a file that cannot be read, a value a library refused: bad input
        print(f"tinyfed: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
