"""A dependency-free progress bar for terminals and log files alike."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    """Redraws in place on a terminal; prints one line per epoch when output is a file."""

    def __init__(self, epochs: int, batches: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.epochs = epochs
        self.batches = batches
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()

    def __call__(self, epoch: int, done: int, loss: float) -> None:
        if not self.tty and done != self.batches:
            return
        filled = int(self.width * done / self.batches)
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done == self.batches else ""
        self.stream.write(f"\repoch {epoch + 1}/{self.epochs} [{bar}] loss {loss:.4f}{end}")
        self.stream.flush()
