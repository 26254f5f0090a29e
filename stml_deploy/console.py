"""One place for terminal output: warnings and progress bars go to stderr, results to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)


def info(message: str) -> None:
    stderr.print(message, markup=False, soft_wrap=True)


def progress(*extra_fields: str, transient: bool = False) -> Progress:
    """A progress bar on stderr; `extra_fields` are task fields shown after the counts
    (e.g. "loss" shows task.fields["loss"])."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(compact=True),
    ]
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in extra_fields]
    return Progress(*columns, console=stderr, transient=transient)
