"""One place for terminal output: warnings and progress bars go to stderr, results to stdout."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Logs and pipes get 120 columns (rich's default of 80 truncates tables); terminals their own.
stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    stderr.print(message, markup=False, soft_wrap=True)


def progress(*extra_fields: str, transient: bool = False) -> Progress:
    """A progress bar on stderr; `extra_fields` are task fields shown after the counts
    (e.g. "loss" shows task.fields["loss"]). Silent when stderr is not a terminal (logs, pipes,
    CI): long jobs print their own summary lines there."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(compact=True),
    ]
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in extra_fields]
    return Progress(*columns, console=stderr, transient=transient, disable=not stderr.is_terminal)
