"""One place for terminal output: warnings and progress bars go to stderr, results to stdout.

Messages carry user-supplied strings (file names, paths): they are printed as plain text, never
parsed as rich markup (a file named `broken[/x].jpg` is a name, not a closing tag), and names
that are not valid UTF-8 are shown with backslash escapes instead of failing to print."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Logs and pipes get 120 columns (rich's default of 80 truncates tables); terminals their own.
# markup=False: every string printed, table cells and titles included, is shown as it is (user
# strings are file names, not markup); styling goes through Text objects.
stderr = Console(
    stderr=True, highlight=False, markup=False, width=None if sys.stderr.isatty() else 120
)
stdout = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 120)


def printable(text: object) -> str:
    """`text` as a str any terminal encoding can take: the undecodable bytes of a file name
    (os.fsdecode keeps them as lone surrogates) become `\\xff` escapes."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plain(text: object) -> Text:
    """A user string for a rich table cell or title: shown as is, no markup."""
    return Text(printable(text))


def warn(message: str) -> None:
    stderr.print(Text.assemble(("warning:", "yellow"), " ", printable(message)), soft_wrap=True)


def info(message: str) -> None:
    stderr.print(printable(message), markup=False, soft_wrap=True)


def result(message: str) -> None:
    """A result line on stdout (what a command wrote or found), as plain text."""
    stdout.print(printable(message), markup=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Throughput, e.g. "412 images/s" (rich's own speed estimate over recent updates)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"- {self.unit}/s")
        shown = f"{speed:.0f}" if speed >= 10 else f"{speed:.2g}"
        return Text(f"{shown} {self.unit}/s")


def progress(*extra_fields: str, transient: bool = False, unit: str = "images") -> Progress:
    """A progress bar on stderr: description, bar, counts, rate in `unit`/s, elapsed time and
    ETA; `extra_fields` are task fields shown after them (e.g. "loss" shows
    task.fields["loss"]). Silent when stderr is not a terminal (logs, pipes, CI): long jobs
    print their own summary lines there."""
    columns = [
        TextColumn("{task.description}", markup=False),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(compact=True),
    ]
    columns += [TextColumn(f"{{task.fields[{name}]}}", markup=False) for name in extra_fields]
    return Progress(*columns, console=stderr, transient=transient, disable=not stderr.is_terminal)
