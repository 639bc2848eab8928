"""How a role adds a subcommand to ``tinyfed``, without the core importing the role.

Each role declares its commands as entry points in the ``tinyfed.commands``
group (pyproject.toml), each naming a :class:`Command`. The umbrella command
(``tinyfed.cli``) finds them there, lists only those whose extras are
installed, and tells the user which extra to install for the others. A
registration module is imported on every ``tinyfed`` run, so it declares
options only; its handlers import the implementation when they run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One ``tinyfed NAME ...`` subcommand.

    ``configure`` adds the command's options (or its actions, as subparsers)
    to its parser and sets a ``handler`` default on each runnable parser.
    ``extras`` names the extras in pyproject.toml the command needs
    installed; their requirement lists are read from the installed
    distribution's metadata, so pyproject stays the one place they are written.
    An empty tuple means the core alone runs it.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    extras: tuple[str, ...] = ()


def add_actions(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Subparsers for a command made of actions (``tinyfed gateway run|status|rollback``)."""
    return parser.add_subparsers(dest="action", required=True)
